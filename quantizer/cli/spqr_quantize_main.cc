// spqr-quantize: quantizes a Hugging Face LLaMA-family checkpoint into an SpQR model directory.
//   spqr-quantize --model DIR --out DIR --calibration TEXT [--method spqr|gptq|rtn] [--wbits 3]
//                 [--beta1 16] [--beta2 16] [--stats_bits 3] [--tau 0.2|inf] [--lambda 1.0]
//                 [--act_order] [--nsamples 128] [--seqlen 2048] [--seed 0] [--threads 0] [--force]
// Progress: one JSON line per layer and per block on stderr. Result: quantization_report.{json,txt}
// in the output directory, the readable summary also on stdout.
#include <cmath>
#include <cstdio>
#include <iostream>
#include <limits>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "quantizer/model_quantizer.h"

ABSL_FLAG(std::string, model, "", "input checkpoint directory (HF layout)");
ABSL_FLAG(std::string, out, "", "output SpQR model directory");
ABSL_FLAG(bool, force, false, "overwrite an existing output directory");
ABSL_FLAG(std::string, calibration, "", "calibration text file");
ABSL_FLAG(int, nsamples, 128, "calibration windows");
ABSL_FLAG(int, seqlen, 2048, "tokens per calibration window");
ABSL_FLAG(uint64_t, seed, 0, "seed of the calibration window draw");
ABSL_FLAG(std::string, method, "spqr", "spqr, gptq or rtn");
ABSL_FLAG(int, wbits, 3, "weight bits (2..8)");
ABSL_FLAG(int, beta1, 16, "columns per statistics group (0 = one group per row)");
ABSL_FLAG(int, beta2, 16, "rows per second-level statistics block");
ABSL_FLAG(int, stats_bits, 3, "statistics bits (3..8, or 16 for fp16 statistics)");
ABSL_FLAG(std::string, tau, "inf", "outlier threshold (spqr only), 'inf' for none");
ABSL_FLAG(double, lambda, 1.0, "Hessian damping relative to mean(diag H)");
ABSL_FLAG(bool, act_order, true, "permute inputs by descending Hessian diagonal");
ABSL_FLAG(int, threads, 0, "worker threads (0 = all cores)");

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("Quantize a LLaMA-family checkpoint with SpQR, GPTQ or RTN.");
  absl::ParseCommandLine(argc, argv);
  spqr::ModelQuantizeJob job;
  job.model_dir = absl::GetFlag(FLAGS_model);
  job.output_dir = absl::GetFlag(FLAGS_out);
  job.force = absl::GetFlag(FLAGS_force);
  job.calibration_text = absl::GetFlag(FLAGS_calibration);
  job.nsamples = absl::GetFlag(FLAGS_nsamples);
  job.seqlen = absl::GetFlag(FLAGS_seqlen);
  job.seed = absl::GetFlag(FLAGS_seed);
  job.threads = absl::GetFlag(FLAGS_threads);
  const std::string method = absl::GetFlag(FLAGS_method);
  if (method == "spqr") {
    job.layer.method = spqr::SpqrLayerConfig::Method::kSpqr;
  } else if (method == "gptq") {
    job.layer.method = spqr::SpqrLayerConfig::Method::kGptq;
  } else if (method == "rtn") {
    job.layer.method = spqr::SpqrLayerConfig::Method::kRtn;
  } else {
    std::cerr << "error: --method must be spqr, gptq or rtn, got '" << method << "'\n";
    return 2;
  }
  job.layer.wbits = absl::GetFlag(FLAGS_wbits);
  job.layer.beta1 = absl::GetFlag(FLAGS_beta1);
  job.layer.beta2 = absl::GetFlag(FLAGS_beta2);
  job.layer.stats_bits = absl::GetFlag(FLAGS_stats_bits);
  job.layer.lambda = absl::GetFlag(FLAGS_lambda);
  job.layer.act_order = absl::GetFlag(FLAGS_act_order);
  const std::string tau = absl::GetFlag(FLAGS_tau);
  if (tau == "inf" || tau == "none") {
    job.layer.tau = std::numeric_limits<double>::infinity();
  } else {
    char* end = nullptr;
    job.layer.tau = std::strtod(tau.c_str(), &end);
    if (end == tau.c_str() || *end != '\0') {
      std::cerr << "error: --tau must be a number or 'inf', got '" << tau << "'\n";
      return 2;
    }
  }
  if (job.model_dir.empty() || job.output_dir.empty() || job.calibration_text.empty()) {
    std::cerr << "error: --model, --out and --calibration are required\n";
    return 2;
  }
  auto report =
      spqr::QuantizeModel(job, [](const std::string& line) { std::cerr << line << std::endl; });
  if (!report.ok()) {
    std::cerr << "error: " << report.status().message() << "\n";
    return 1;
  }
  std::cout << report->ToText();
  return 0;
}
