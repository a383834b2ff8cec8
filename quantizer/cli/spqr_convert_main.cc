// spqr-convert: imports a SpQR checkpoint published for transformers (quant_method "spqr", the
// authors' spqr_quant layout) into an spqr-format 1 model directory (docs/model-format.md,
// section 11).
//   spqr-convert --in DIR --out DIR [--force]
// Prints one JSON line (layers, parameters, outliers, avg_bits_real, seconds) on success.
#include <iostream>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "nlohmann/json.hpp"
#include "quantizer/cli/flag_usage.h"
#include "quantizer/hf_convert.h"

ABSL_FLAG(std::string, in, "", "transformers SpQR checkpoint directory (config.json, safetensors)");
ABSL_FLAG(std::string, out, "", "output directory (new, empty, or an earlier output with --force)");
ABSL_FLAG(bool, force, false, "replace an existing output directory written by spqr-convert");

namespace {
constexpr char kSynopsis[] =
    "spqr-convert: import a transformers SpQR checkpoint into spqr-format 1.\n"
    "usage: spqr-convert --in DIR --out DIR [--force]";
}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("Import a transformers SpQR checkpoint into spqr-format 1.");
  if (spqr::WantsHelp(argc, argv)) {
    std::cout << spqr::FlagUsage(kSynopsis, "spqr_convert_main");
    return 0;
  }
  absl::ParseCommandLine(argc, argv);
  const std::string in = absl::GetFlag(FLAGS_in), out = absl::GetFlag(FLAGS_out);
  if (in.empty() || out.empty()) {
    std::cerr << "error: --in and --out are required (see --help)\n";
    return 2;
  }
  auto r = spqr::ConvertHfSpqrModel(in, out, absl::GetFlag(FLAGS_force));
  if (!r.ok()) {
    std::cerr << "error: " << r.status().message() << "\n";
    return 1;
  }
  std::cout << nlohmann::json({{"layers", r->layers},
                               {"parameters", r->parameters},
                               {"outliers", r->outliers},
                               {"avg_bits_real", r->avg_bits_real},
                               {"seconds", r->seconds}})
                   .dump()
            << std::endl;
  return 0;
}
