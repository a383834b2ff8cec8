// Perplexity of a model directory through the engine's CPU backend with each kernel choice, on the
// same windows: what the fast kernels' activation rounding costs against the exact kernels.
// Kernel choices: exact (SpQR exact + dense exact), int8 (SpQR int8 + dense exact), bf16 (SpQR
// exact + dense bf16), auto (what the server runs by default on this CPU).
// Protocol as spqr-eval's (docs/quality.md): the whole text tokenized at once without BOS,
// non-overlapping windows of --seqlen tokens (tail dropped), tokens 1..L-1 of each window scored,
// ppl = exp(total NLL / scored tokens). Prints one JSON object.
//
//   spqr-kernel-ppl --model DIR --text FILE [--seqlen 512] [--windows 0 (all)] [--threads 0]
//                   [--kernels exact,int8,bf16,auto]
#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "engine/backend/backend.h"
#include "engine/runtime/model.h"
#include "nlohmann/json.hpp"

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

// Total NLL (nats) of tokens 1..L-1 of one window, from a single prefill with all logits.
absl::StatusOr<double> WindowNll(Backend& backend, const std::vector<int32_t>& window,
                                 const std::vector<int32_t>& table) {
  StepPlan plan;
  SequenceStep s;
  s.tokens = window;
  s.start_pos = 0;
  s.block_table = table;
  s.num_logits = static_cast<int32_t>(window.size());
  plan.seqs.push_back(s);
  StepOutput out;
  if (absl::Status st = backend.Forward(plan, &out); !st.ok()) return st;
  double nll = 0.0;
  for (size_t t = 0; t + 1 < window.size(); ++t) {
    const float* row = out.row(t);
    const float mx = *std::max_element(row, row + out.vocab_size);
    double z = 0.0;
    for (int v = 0; v < out.vocab_size; ++v) z += std::exp(static_cast<double>(row[v]) - mx);
    nll += (std::log(z) + mx) - row[window[t + 1]];
  }
  return nll;
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
  std::ifstream in(args.text, std::ios::binary);
  if (!in) {
    std::cerr << "cannot read --text " << args.text << "\n";
    return 1;
  }
  std::stringstream buf;
  buf << in.rdbuf();
  std::string loadavg;
  std::getline(std::ifstream("/proc/loadavg"), loadavg);
  nlohmann::json result = {{"model", args.model},
                           {"text", args.text},
                           {"seqlen", args.seqlen},
                           {"threads", args.threads},
                           {"loadavg_at_start", loadavg}};
  for (const std::string& kernel : args.kernels) {
    ModelLoadOptions options;
    options.backend = "cpu";
    options.num_threads = args.threads;
    if (kernel == "exact" || kernel == "int8" || kernel == "bf16" || kernel == "auto") {
      options.spqr_cpu_kernel = kernel == "int8" || kernel == "auto" ? kernel : "exact";
      options.dense_cpu_kernel = kernel == "bf16" || kernel == "auto" ? kernel : "exact";
    } else {
      std::cerr << "--kernels: unknown kernel choice \"" << kernel
                << "\" (exact, int8, bf16, auto)\n";
      return 2;
    }
    auto model = LoadModel(args.model, options);
    if (!model.ok()) {
      std::cerr << model.status() << "\n";
      return 1;
    }
    const std::vector<int32_t> ids = (*model)->tokenizer->Encode(buf.str(), false);
    int64_t windows = static_cast<int64_t>(ids.size()) / args.seqlen;
    if (args.windows > 0) windows = std::min<int64_t>(windows, args.windows);
    if (windows == 0) {
      std::cerr << "the text has fewer than --seqlen " << args.seqlen << " tokens\n";
      return 1;
    }
    Backend& backend = *(*model)->backend;
    KvPoolShape shape;
    shape.block_size = 16;
    shape.num_blocks = (args.seqlen + 15) / 16;
    if (absl::Status st = backend.AllocateKvPool(shape); !st.ok()) {
      std::cerr << st << "\n";
      return 1;
    }
    std::vector<int32_t> table(static_cast<size_t>(shape.num_blocks));
    for (int32_t b = 0; b < shape.num_blocks; ++b) table[b] = b;
    const auto start = std::chrono::steady_clock::now();
    double total = 0.0;
    for (int64_t w = 0; w < windows; ++w) {
      const std::vector<int32_t> window(ids.begin() + w * args.seqlen,
                                        ids.begin() + (w + 1) * args.seqlen);
      auto nll = WindowNll(backend, window, table);
      if (!nll.ok()) {
        std::cerr << nll.status() << "\n";
        return 1;
      }
      total += *nll;
    }
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const int64_t scored = windows * (args.seqlen - 1);
    result["kernels"][kernel] = {{"total_nll", total},
                                 {"scored_tokens", scored},
                                 {"windows", windows},
                                 {"ppl", std::exp(total / static_cast<double>(scored))},
                                 {"seconds", seconds}};
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
