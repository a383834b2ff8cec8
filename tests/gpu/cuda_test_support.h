// Helpers shared by the CUDA parity tests: the skip-without-device guard, seeded random inputs and
// error measures. Every GPU test compares against a plain C++ twin (cuda_op_refs.h) on random,
// odd-shaped inputs, with outputs poisoned beforehand so that an unwritten element cannot pass.
#pragma once

#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "engine/backend/cuda/device_query.h"
#include "gtest/gtest.h"

namespace spqr::testing {

// Empty when device 0 can run this binary's kernels; otherwise why it cannot (computed once).
inline const std::string& CudaSkipReason() {
  static const std::string reason = [] {
    absl::StatusOr<std::vector<CudaDeviceInfo>> devices = QueryCudaDevices();
    if (!devices.ok()) return "no usable CUDA device: " + devices.status().ToString();
    if (devices->empty()) return std::string("the CUDA driver is present but shows no device");
    if (!devices->front().can_run_kernels) {
      return "CUDA device 0 cannot run this binary: " + devices->front().unsupported_reason;
    }
    return std::string();
  }();
  return reason;
}

#define SPQR_SKIP_WITHOUT_CUDA_DEVICE()                  \
  do {                                                   \
    if (!::spqr::testing::CudaSkipReason().empty()) {    \
      GTEST_SKIP() << ::spqr::testing::CudaSkipReason(); \
    }                                                    \
  } while (0)

// A fresh seed per run (inputs must differ between runs), printed on failure to reproduce it.
inline uint32_t FreshSeed() { return std::random_device{}(); }

inline std::vector<float> RandomNormal(size_t n, float stddev, std::mt19937& rng) {
  std::normal_distribution<float> dist(0.0f, stddev);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// |a - b| <= atol + rtol * |b| for every element, both finite; reports the first few failures.
inline ::testing::AssertionResult AllClose(const std::vector<float>& actual,
                                           const std::vector<double>& expected, double atol,
                                           double rtol) {
  if (actual.size() != expected.size()) {
    return ::testing::AssertionFailure()
           << "size " << actual.size() << " != expected " << expected.size();
  }
  int failures = 0;
  double worst = 0.0;
  std::string first;
  for (size_t i = 0; i < actual.size(); ++i) {
    const double a = actual[i];
    const double e = expected[i];
    const double err = std::abs(a - e);
    const bool ok = std::isfinite(a) && std::isfinite(e) && err <= atol + rtol * std::abs(e);
    if (!ok) {
      if (failures < 5) {
        first += "\n  [" + std::to_string(i) + "] got " + std::to_string(a) + " want " +
                 std::to_string(e);
      }
      ++failures;
    }
    if (std::isfinite(err)) worst = std::max(worst, err / (atol + rtol * std::abs(e)));
  }
  if (failures > 0) {
    return ::testing::AssertionFailure()
           << failures << " of " << actual.size() << " elements out of tolerance" << first;
  }
  return ::testing::AssertionSuccess() << "worst error " << worst << " of the allowed bound";
}

}  // namespace spqr::testing
