#include "server/log.h"

#include <atomic>
#include <cstdio>
#include <string>

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace spqr {
namespace {
std::atomic<int> min_level{static_cast<int>(LogLevel::kInfo)};
}  // namespace

std::string LogSafe(absl::string_view client_string, size_t max_bytes) {
  const absl::string_view kept = client_string.substr(0, max_bytes);
  std::string out;
  out.reserve(kept.size() + 16);
  for (const char c : kept) {
    const unsigned char byte = static_cast<unsigned char>(c);
    switch (c) {
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\\':
        out += "\\\\";
        break;
      default:
        if (byte < 0x20 || byte >= 0x7f) {
          absl::StrAppendFormat(&out, "\\x%02x", byte);
        } else {
          out += c;
        }
    }
  }
  if (kept.size() < client_string.size()) {
    absl::StrAppendFormat(&out, "...(%d bytes)", client_string.size());
  }
  return out;
}

void SetLogLevel(absl::string_view level) {
  LogLevel parsed = LogLevel::kInfo;
  if (level == "debug") parsed = LogLevel::kDebug;
  if (level == "warning") parsed = LogLevel::kWarning;
  if (level == "error") parsed = LogLevel::kError;
  min_level.store(static_cast<int>(parsed));
}

bool LogEnabled(LogLevel level) { return static_cast<int>(level) >= min_level.load(); }

void LogLine(LogLevel level, absl::string_view message) {
  static constexpr const char* kNames[] = {"DEBUG", "INFO", "WARNING", "ERROR"};
  const std::string time =
      absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::Now(), absl::UTCTimeZone());
  // A line break or terminal escape that reached a message anyway (through a value nobody passed
  // through LogSafe) still cannot start a forged line.
  std::string line(message);
  for (char& c : line) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = '?';
  }
  // One fprintf per line keeps lines from different threads whole.
  std::fprintf(stderr, "%s %s %s\n", time.c_str(), kNames[static_cast<int>(level)], line.c_str());
}

}  // namespace spqr
