// spqr-bench-finite-check: what the load-time NaN/Inf scan of the dense weights costs
// (engine/model/finite_check.h) on a model directory. Prints one JSON object: the dense tensors'
// count and bytes, BindLlamaWeights' time (the scan included, first touch of the mapped pages),
// and the scan alone (best of --repeats, pages resident) for 1, 2 and all OpenMP threads.
//   spqr-bench-finite-check --model DIR [--repeats 5]
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <iostream>
#include <string>

#include "absl/strings/numbers.h"
#include "engine/model/finite_check.h"
#include "engine/model/llama_weights.h"
#include "engine/model/model_config.h"
#include "engine/model/safetensors.h"
#include "nlohmann/json.hpp"

namespace {

double MsSince(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t).count();
}

constexpr char kUsage[] = "usage: spqr-bench-finite-check --model DIR [--repeats 5]\n";

}  // namespace

int main(int argc, char** argv) {
  std::string model;
  int repeats = 5;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      std::cout << kUsage;
      return 0;
    }
    if (i + 1 >= argc) {
      std::cerr << kUsage;
      return 2;
    }
    if (a == "--model") {
      model = argv[++i];
    } else if (a == "--repeats" && absl::SimpleAtoi(argv[i + 1], &repeats) && repeats > 0) {
      ++i;
    } else {
      std::cerr << kUsage;
      return 2;
    }
  }
  if (model.empty()) {
    std::cerr << kUsage;
    return 2;
  }
  auto config = spqr::LoadModelConfig(model);
  auto opened = spqr::Checkpoint::Open(model);
  if (!config.ok() || !opened.ok()) {
    std::cerr << "error: " << (config.ok() ? opened.status() : config.status()).message() << "\n";
    return 1;
  }
  std::shared_ptr<const spqr::Checkpoint> checkpoint(std::move(*opened));
  const auto bind_start = std::chrono::steady_clock::now();
  auto weights = spqr::BindLlamaWeights(checkpoint, *config);
  const double bind_ms = MsSince(bind_start);
  if (!weights.ok()) {
    std::cerr << "error: " << weights.status().message() << "\n";
    return 1;
  }
  const std::vector<const spqr::TensorView*> tensors = spqr::DenseFloatTensors(**weights);
  int64_t bytes = 0;
  for (const spqr::TensorView* t : tensors) bytes += static_cast<int64_t>(t->nbytes);
  nlohmann::ordered_json out = {{"model", model},
                                {"dense_tensors", tensors.size()},
                                {"dense_bytes", bytes},
                                {"bind_ms_including_check_first_touch", bind_ms}};
  nlohmann::ordered_json scans = nlohmann::ordered_json::array();
  for (int threads : {1, 2, omp_get_max_threads()}) {
    double best = 1e300;
    for (int r = 0; r < repeats; ++r) {
      const auto start = std::chrono::steady_clock::now();
      const absl::Status st = spqr::CheckTensorsFinite(tensors, threads);
      best = std::min(best, MsSince(start));
      if (!st.ok()) {
        std::cerr << "error: " << st.message() << "\n";
        return 1;
      }
    }
    scans.push_back({{"threads", threads}, {"best_ms", best}, {"gb_per_s", bytes / best / 1e6}});
  }
  out["check_alone"] = scans;
  std::cout << out.dump(2) << std::endl;
  return 0;
}
