// Perplexity of a model directory through the engine's CPU backend with each kernel choice, on the
// same windows: what the fast kernels' activation rounding costs against the exact kernels.
// Kernel choices: exact (SpQR exact + dense exact), int8 (SpQR int8 + dense exact), bf16 (SpQR
// exact + dense bf16), auto (what the server runs by default on this CPU).
// Each choice is one EvaluatePerplexity (quantizer/perplexity.h) with the engine forward: the code
// behind `spqr-eval --forward engine`, so protocol and numbers are spqr-eval's (the whole text
// tokenized at once without BOS, non-overlapping windows of --seqlen tokens, tail dropped, tokens
// 1..L-1 of each window scored, ppl = exp(mean window loss)). Prints one JSON object; a kernel's
// "seconds" are its forwards over the windows (not loading).
//
//   spqr-kernel-ppl --model DIR --text FILE [--seqlen 512] [--windows 0 (all)] [--threads 0]
//                   [--kernels exact,int8,bf16,auto]
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "nlohmann/json.hpp"
#include "quantizer/perplexity.h"

namespace spqr {
namespace {

struct Args {
  std::string model, text;
  int seqlen = 512;
  int windows = 0;
  int threads = 0;
  std::vector<std::string> kernels = {"exact", "int8"};
};

constexpr char kUsage[] =
    "usage: spqr-kernel-ppl --model DIR --text FILE [--seqlen 512] [--windows 0 (all)] "
    "[--threads 0] [--kernels exact,int8,bf16,auto]\n";

bool ParseArgs(int argc, char** argv, Args* a) {
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
    bool ok = true;
    if (flag == "--model") {
      a->model = value;
    } else if (flag == "--text") {
      a->text = value;
    } else if (flag == "--seqlen") {
      ok = absl::SimpleAtoi(value, &a->seqlen) && a->seqlen >= 2;
    } else if (flag == "--windows") {
      ok = absl::SimpleAtoi(value, &a->windows) && a->windows >= 0;
    } else if (flag == "--threads") {
      ok = absl::SimpleAtoi(value, &a->threads) && a->threads >= 0;
    } else if (flag == "--kernels") {
      a->kernels = absl::StrSplit(value, ',');
    } else {
      ok = false;
    }
    if (!ok) return false;
  }
  return argc % 2 == 1 && !a->model.empty() && !a->text.empty();
}

int Main(int argc, char** argv) {
  if (argc == 2 && (std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h")) {
    std::cout << kUsage;
    return 0;
  }
  Args args;
  if (!ParseArgs(argc, argv, &args)) {
    std::cerr << kUsage;
    return 2;
  }
  std::string loadavg;
  std::getline(std::ifstream("/proc/loadavg"), loadavg);
  nlohmann::json result = {{"model", args.model},
                           {"text", args.text},
                           {"seqlen", args.seqlen},
                           {"threads", args.threads},
                           {"loadavg_at_start", loadavg}};
  for (const std::string& kernel : args.kernels) {
    PerplexityOptions options;
    options.seqlen = args.seqlen;
    options.max_windows = args.windows;
    options.threads = args.threads;
    options.forward = PerplexityForward::kEngine;
    if (kernel == "exact" || kernel == "int8" || kernel == "bf16" || kernel == "auto") {
      options.spqr_kernel = kernel == "int8" || kernel == "auto" ? kernel : "exact";
      options.dense_kernel = kernel == "bf16" || kernel == "auto" ? kernel : "exact";
    } else {
      std::cerr << "--kernels: unknown kernel choice \"" << kernel
                << "\" (exact, int8, bf16, auto)\n";
      return 2;
    }
    auto r = EvaluatePerplexity(args.model, args.text, options);
    if (!r.ok()) {
      std::cerr << r.status() << "\n";
      return 1;
    }
    result["kernels"][kernel] = {
        {"total_nll", r->total_nll},      {"scored_tokens", r->tokens_scored},
        {"windows", r->windows},          {"ppl", r->ppl},
        {"seconds", r->eval_seconds},     {"spqr_kernel", r->spqr_kernel},
        {"dense_kernel", r->dense_kernel}};
  }
  if (result["kernels"].contains("exact")) {
    const double a = result["kernels"]["exact"]["ppl"];
    for (const char* k : {"int8", "bf16", "auto"}) {
      if (result["kernels"].contains(k)) {
        const double b = result["kernels"][k]["ppl"];
        result[std::string(k) + "_vs_exact_relative"] = b / a - 1.0;
      }
    }
  }
  std::cout << result.dump(2) << "\n";
  return 0;
}

}  // namespace
}  // namespace spqr

int main(int argc, char** argv) { return spqr::Main(argc, argv); }
