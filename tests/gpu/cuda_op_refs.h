// Plain C++ twins of the CUDA kernels, in double precision, written straight from the definitions
// (Hugging Face's LlamaRMSNorm, rotate-half RoPE, SiLU-gated MLP, Y = X W^T). They are the
// reference the GPU parity tests compare against; speed does not matter here.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

namespace spqr::testing {

// x: [rows, dim] with row stride `stride`; weight: [dim] already widened to float.
inline std::vector<double> RmsNormRef(const std::vector<float>& x, int64_t rows, int64_t dim,
                                      int64_t stride, const std::vector<float>& weight,
                                      double eps) {
  std::vector<double> out(rows * dim);
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = x.data() + r * stride;
    double sum = 0.0;
    for (int64_t i = 0; i < dim; ++i) sum += double{row[i]} * row[i];
    const double scale = 1.0 / std::sqrt(sum / dim + eps);
    for (int64_t i = 0; i < dim; ++i) out[r * dim + i] = weight[i] * (row[i] * scale);
  }
  return out;
}

// Rotates one head vector in place (double accumulation). The angle is formed in fp32, as
// transformers forms it (float positions times float inverse frequencies).
inline void RopeHeadRef(double* x, int head_dim, int32_t position,
                        const std::vector<float>& inv_freq) {
  const int half = head_dim / 2;
  for (int i = 0; i < half; ++i) {
    const float angle = static_cast<float>(position) * inv_freq[i];
    const double c = std::cos(static_cast<double>(angle));
    const double s = std::sin(static_cast<double>(angle));
    const double x1 = x[i];
    const double x2 = x[i + half];
    x[i] = x1 * c - x2 * s;
    x[i + half] = x2 * c + x1 * s;
  }
}

// inv_freq[i] = theta^(-2i/d), computed in fp32 like transformers' default rope init.
inline std::vector<float> DefaultInvFreq(int head_dim, float theta) {
  std::vector<float> inv(head_dim / 2);
  for (int i = 0; i < head_dim / 2; ++i) {
    inv[i] = 1.0f / std::pow(theta, static_cast<float>(2 * i) / static_cast<float>(head_dim));
  }
  return inv;
}

inline double SiluMulRef(double gate, double up) { return gate / (1.0 + std::exp(-gate)) * up; }

// y[m, n] = x[m, k] · w[n, k]^T, inputs already widened to float.
inline std::vector<double> GemmRef(const std::vector<float>& x, const std::vector<float>& w,
                                   int64_t m, int64_t n, int64_t k,
                                   std::vector<double>* abs_sums = nullptr) {
  std::vector<double> y(m * n);
  if (abs_sums != nullptr) abs_sums->assign(m * n, 0.0);
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double acc = 0.0;
      double abs_acc = 0.0;
      for (int64_t t = 0; t < k; ++t) {
        const double p = double{x[i * k + t]} * w[j * k + t];
        acc += p;
        abs_acc += std::abs(p);
      }
      y[i * n + j] = acc;
      if (abs_sums != nullptr) (*abs_sums)[i * n + j] = abs_acc;
    }
  }
  return y;
}

}  // namespace spqr::testing
