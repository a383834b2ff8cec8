// A minimal leveled logger for the daemon: one line per event on stderr, prefixed with the UTC
// time and the level. absl 20220623 has no absl/log, and the engine does not log.
#pragma once

#include <cstddef>
#include <string>

#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"

namespace spqr {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3 };

// A client-supplied string made safe for a log line: control characters, backslashes and every
// non-ASCII byte are escaped (\n, \t, \\, \xNN), so a client cannot forge a log line or write
// terminal escapes, and at most `max_bytes` input bytes are kept: a longer value ends with
// "...(N bytes)" giving its full size, so a megabyte id cannot flood the log. Every log line that
// carries a value a client chose (request ids, status messages that quote a request, metadata)
// passes it through here.
inline constexpr size_t kLogClientStringBytes = 64;
// The bound for status messages, which are longer and may quote client strings.
inline constexpr size_t kLogMessageBytes = 512;
std::string LogSafe(absl::string_view client_string, size_t max_bytes = kLogClientStringBytes);

// Sets the least severe level printed ("debug", "info", "warning", "error"; others: info).
void SetLogLevel(absl::string_view level);
bool LogEnabled(LogLevel level);
void LogLine(LogLevel level, absl::string_view message);

template <typename... Args>
void Logf(LogLevel level, const absl::FormatSpec<Args...>& format, const Args&... args) {
  if (LogEnabled(level)) LogLine(level, absl::StrFormat(format, args...));
}

}  // namespace spqr
