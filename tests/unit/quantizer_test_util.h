// Small random problems for the quantizer and format tests.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

#include "quantizer/hessian.h"

namespace spqr::testing {

// Gaussian weights [m][n] with standard deviation `stddev`.
inline std::vector<float> RandomWeights(int64_t m, int64_t n, uint32_t seed, float stddev = 0.02f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, stddev);
  std::vector<float> w(static_cast<size_t>(m * n));
  for (float& v : w) v = dist(rng);
  return w;
}

// Inputs with strongly correlated features and uneven feature scales (so act-order and error
// compensation matter): x = z A + noise, A mixing a few latent factors. Returns [tokens][n].
inline std::vector<float> CorrelatedInputs(int64_t tokens, int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const int64_t factors = n / 4 + 1;
  std::vector<float> mix(static_cast<size_t>(factors * n));
  for (float& v : mix) v = normal(rng);
  std::vector<float> feature_scale(static_cast<size_t>(n));
  for (int64_t j = 0; j < n; ++j) feature_scale[j] = 0.2f + 3.0f * static_cast<float>(j % 7) / 6;
  std::vector<float> x(static_cast<size_t>(tokens * n));
  std::vector<float> z(static_cast<size_t>(factors));
  for (int64_t t = 0; t < tokens; ++t) {
    for (float& v : z) v = normal(rng);
    for (int64_t j = 0; j < n; ++j) {
      float acc = 0.1f * normal(rng);
      for (int64_t f = 0; f < factors; ++f) acc += z[f] * mix[f * n + j];
      x[t * n + j] = feature_scale[j] * acc;
    }
  }
  return x;
}

inline std::vector<float> CorrelatedHessian(int64_t n, uint32_t seed, int64_t tokens = 512) {
  const std::vector<float> x = CorrelatedInputs(tokens, n, seed);
  HessianAccumulator acc(n);
  acc.AddBatch(x.data(), tokens / 2);
  acc.AddBatch(x.data() + (tokens / 2) * n, tokens - tokens / 2);
  return acc.matrix();
}

}  // namespace spqr::testing
