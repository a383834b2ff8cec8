#include "quantizer/cli/flag_usage.h"

#include <algorithm>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "absl/flags/commandlineflag.h"
#include "absl/flags/reflection.h"
#include "absl/strings/str_cat.h"

namespace spqr {

bool WantsHelp(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    const std::string_view a = argv[i];
    if (a == "--") return false;
    if (a == "-h" || a == "--help" || a == "-help" || a == "--helpfull" || a == "--helpshort") {
      return true;
    }
  }
  return false;
}

void AcceptDashedFlagNames(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    char* arg = argv[i];
    if (std::string_view(arg) == "--") return;
    if (arg[0] != '-') continue;
    char* name = arg + (arg[1] == '-' ? 2 : 1);
    const std::string_view written(name, std::strcspn(name, "="));
    std::string candidate(written);
    std::replace(candidate.begin(), candidate.end(), '-', '_');
    if (candidate == written || absl::FindCommandLineFlag(candidate) == nullptr) continue;
    std::copy(candidate.begin(), candidate.end(), name);  // same length: in place
  }
}

std::string FlagUsage(const std::string& synopsis, const std::string& file_part) {
  std::vector<const absl::CommandLineFlag*> flags;
  for (const auto& [name, flag] : absl::GetAllFlags()) {
    if (flag->Filename().find(file_part) != std::string::npos) flags.push_back(flag);
  }
  std::sort(flags.begin(), flags.end(),
            [](const auto* a, const auto* b) { return a->Name() < b->Name(); });
  std::string out = synopsis;
  if (!out.empty() && out.back() != '\n') out += '\n';
  out += "\nFlags:\n";
  for (const absl::CommandLineFlag* f : flags) {
    const std::string def = f->DefaultValue();
    absl::StrAppend(&out, "  --", f->Name(), " (default: ", def.empty() ? "\"\"" : def, ")\n      ",
                    f->Help(), "\n");
  }
  return out;
}

}  // namespace spqr
