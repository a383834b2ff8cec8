// In-process comparison of the dense CPU linear kernels on one shape: every kernel runs once per
// round, rounds interleave the kernels (so load from other processes on a shared machine hits all
// of them alike), and the best and median round times (and the best CPU time, all threads) are
// printed as one JSON line per kernel.
//
//   spqr-bench-dense-linear [--out 5632] [--in 2048] [--tokens 512] [--threads 2] [--rounds 7]
//                           [--kernels linear,blocked,bf16]
//
// Kernels: linear = cpu::Linear (what the backend's exact kernel calls), blocked =
// cpu::LinearBlocked (the K-blocked GEMM at any token count), bf16 = cpu::LinearBf16 (AVX512-BF16
// only). Weights are random BF16.
#include <omp.h>
#include <time.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "engine/backend/cpu/linear.h"
#include "engine/backend/cpu/linear_bf16.h"
#include "engine/backend/cpu/linear_gemm.h"
#include "engine/util/half.h"

namespace spqr {
namespace {

struct Args {
  int64_t out = 5632, in = 2048, tokens = 512;
  int threads = 2, rounds = 7;
  std::vector<std::string> kernels = {"linear", "blocked"};
};

bool ParseArgs(int argc, char** argv, Args* a) {
  if (argc % 2 != 1) return false;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
    bool ok = true;
    if (flag == "--out") {
      ok = absl::SimpleAtoi(value, &a->out) && a->out > 0;
    } else if (flag == "--in") {
      ok = absl::SimpleAtoi(value, &a->in) && a->in > 0;
    } else if (flag == "--tokens") {
      ok = absl::SimpleAtoi(value, &a->tokens) && a->tokens > 0;
    } else if (flag == "--threads") {
      ok = absl::SimpleAtoi(value, &a->threads) && a->threads > 0;
    } else if (flag == "--rounds") {
      ok = absl::SimpleAtoi(value, &a->rounds) && a->rounds > 0;
    } else if (flag == "--kernels") {
      a->kernels = absl::StrSplit(value, ',');
    } else {
      ok = false;
    }
    if (!ok) return false;
  }
  for (const std::string& k : a->kernels) {
    if (k != "linear" && k != "blocked" && k != "bf16") return false;
  }
  return true;
}

int Main(int argc, char** argv) {
  Args args;
  if (!ParseArgs(argc, argv, &args)) {
    std::fprintf(stderr,
                 "usage: spqr-bench-dense-linear [--out N] [--in N] [--tokens N] [--threads N] "
                 "[--rounds N] [--kernels linear,blocked,bf16]\n");
    return 2;
  }
  for (const std::string& k : args.kernels) {
    if (k == "bf16" && !cpu::Bf16DotSupported()) {
      std::fprintf(stderr, "kernel bf16: this CPU has no AVX512-BF16\n");
      return 2;
    }
  }
  std::mt19937 rng(1);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<uint16_t> w(static_cast<size_t>(args.out * args.in));
  for (uint16_t& v : w) v = F32ToBf16(0.02f * normal(rng));
  std::vector<float> x(static_cast<size_t>(args.tokens * args.in));
  for (float& v : x) v = normal(rng);
  LinearTensors layer;
  layer.weight.dtype = DType::kBF16;
  layer.weight.shape = {args.out, args.in};
  layer.weight.data = w.data();
  layer.weight.nbytes = w.size() * 2;
  layer.out_features = args.out;
  layer.in_features = args.in;
  cpu::PackedActivations packed;
  cpu::PackActivations(x.data(), args.tokens, args.in, &packed);
  std::vector<float> y(static_cast<size_t>(args.tokens * args.out));

  auto run = [&](const std::string& k) {
    if (k == "linear") {
      cpu::Linear(layer, packed, y.data(), args.threads);
    } else if (k == "blocked") {
      cpu::LinearBlocked(layer, packed, y.data(), args.threads);
    } else {
      cpu::LinearBf16(layer, packed, y.data(), args.threads);
    }
  };
  // Process CPU time next to wall time: on a machine shared with other work, wall time measures
  // the scheduler too; CPU seconds (all threads) measure what the kernel itself took.
  auto cpu_now = [] {
    timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
  };
  std::vector<std::vector<double>> seconds(args.kernels.size()), cpu(args.kernels.size());
  for (const std::string& k : args.kernels) run(k);  // warm-up: page in, start the threads
  for (int round = 0; round < args.rounds; ++round) {
    for (size_t i = 0; i < args.kernels.size(); ++i) {
      const auto start = std::chrono::steady_clock::now();
      const double cpu_start = cpu_now();
      run(args.kernels[i]);
      cpu[i].push_back(cpu_now() - cpu_start);
      seconds[i].push_back(
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    }
  }
  const double flops = 2.0 * args.out * args.in * args.tokens;
  for (size_t i = 0; i < args.kernels.size(); ++i) {
    std::vector<double> s = seconds[i];
    std::sort(s.begin(), s.end());
    const double cpu_best = *std::min_element(cpu[i].begin(), cpu[i].end());
    std::printf(
        "{\"kernel\": \"%s\", \"out\": %ld, \"in\": %ld, \"tokens\": %ld, \"threads\": %d, "
        "\"best_ms\": %.3f, \"median_ms\": %.3f, \"best_gflops\": %.1f, \"best_cpu_ms\": %.3f}\n",
        args.kernels[i].c_str(), static_cast<long>(args.out), static_cast<long>(args.in),
        static_cast<long>(args.tokens), args.threads, 1e3 * s.front(), 1e3 * s[s.size() / 2],
        flops / s.front() * 1e-9, 1e3 * cpu_best);
  }
  return 0;
}

}  // namespace
}  // namespace spqr

int main(int argc, char** argv) { return spqr::Main(argc, argv); }
