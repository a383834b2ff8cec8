#include "engine/backend/cpu/rms_norm.h"

#include <cmath>
#include <vector>

#include "engine/backend/cpu/simd.h"

namespace spqr::cpu {

void RmsNorm(const float* x, int64_t num_tokens, int64_t hidden, const TensorView& weight,
             float eps, float* out, int num_threads) {
  // The norm weight is tiny ([hidden]); converting it per call keeps no fp32 copy around.
  std::vector<float> w(hidden);
  ConvertToF32(weight.dtype, weight.data, 0, hidden, w.data());
#pragma omp parallel for num_threads(num_threads) schedule(static) if (num_tokens > 1)
  for (int64_t t = 0; t < num_tokens; ++t) {
    const float* xr = x + t * hidden;
    float* yr = out + t * hidden;
    const float mean_sq = DotF32(xr, xr, hidden) / static_cast<float>(hidden);
    const float inv_rms = 1.0f / std::sqrt(mean_sq + eps);
    for (int64_t i = 0; i < hidden; ++i) yr[i] = w[i] * (xr[i] * inv_rms);
  }
}

}  // namespace spqr::cpu
