// A minimal leveled logger for the daemon: one line per event on stderr, prefixed with the UTC
// time and the level. absl 20220623 has no absl/log, and the engine does not log.
#pragma once

#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"

namespace spqr {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3 };

// Sets the least severe level printed ("debug", "info", "warning", "error"; others: info).
void SetLogLevel(absl::string_view level);
bool LogEnabled(LogLevel level);
void LogLine(LogLevel level, absl::string_view message);

template <typename... Args>
void Logf(LogLevel level, const absl::FormatSpec<Args...>& format, const Args&... args) {
  if (LogEnabled(level)) LogLine(level, absl::StrFormat(format, args...));
}

}  // namespace spqr
