// --help for the quantizer's command-line tools. Abseil's own --help (this Debian version)
// filters flags by the program's name, finds none for "spqr-quantize" and exits 1; these tools
// print their usage to stdout and exit 0 instead.
#pragma once

#include <string>

namespace spqr {

// True when argv holds -h, --help, -help, --helpfull or --helpshort (before any "--").
bool WantsHelp(int argc, char** argv);

// Lets a flag be spelled with '-' for '_' (--spqr-kernel for --spqr_kernel; Abseil knows only the
// second): rewrites such names in argv in place, before absl::ParseCommandLine. Only an argument
// whose name (up to '=') becomes a defined flag's name is touched; values after '=' and everything
// after "--" are left alone.
void AcceptDashedFlagNames(int argc, char** argv);

// `synopsis` followed by every flag defined in a source file whose path contains `file_part`:
// "  --name (default: value)\n      help text", sorted by name.
std::string FlagUsage(const std::string& synopsis, const std::string& file_part);

}  // namespace spqr
