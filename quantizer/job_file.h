// The YAML job file of spqr-quantize. Keys (all optional; unknown keys are errors):
//   model, out, calibration: paths            force: bool
//   nsamples, seqlen, seed, threads: integers
//   method: spqr | gptq | rtn                  wbits, beta1, beta2, stats_bits: integers
//   tau: number or "inf"                       lambda: number       act_order: bool
// Command-line flags given explicitly override the file.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "quantizer/model_quantizer.h"

namespace spqr {

// Parses "spqr" / "gptq" / "rtn".
absl::Status ParseMethod(const std::string& name, SpqrLayerConfig::Method* method);
// Parses a number or "inf"/"none" (no outliers).
absl::Status ParseTau(const std::string& text, double* tau);

// Applies the keys of YAML `text` to `job`; `source` names the file in errors.
absl::Status ApplyJobYaml(const std::string& text, const std::string& source,
                          ModelQuantizeJob* job);

}  // namespace spqr
