#include "engine/backend/cpu/rms_norm.h"

#include <cmath>
#include <vector>

#include "engine/backend/cpu/simd.h"
#include "engine/backend/cpu/worker_pool.h"

namespace spqr::cpu {

void RmsNorm(const float* x, int64_t num_tokens, int64_t hidden, const TensorView& weight,
             float eps, float* out, int num_threads) {
  // The norm weight is tiny ([hidden]); converting it per call keeps no fp32 copy around.
  std::vector<float> w(hidden);
  ConvertToF32(weight.dtype, weight.data, 0, hidden, w.data());
  ParallelForStatic(num_tokens > 1 ? num_threads : 1, num_tokens, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const float* xr = x + t * hidden;
      float* yr = out + t * hidden;
      const float mean_sq = DotF32(xr, xr, hidden) / static_cast<float>(hidden);
      const float inv_rms = 1.0f / std::sqrt(mean_sq + eps);
      for (int64_t i = 0; i < hidden; ++i) yr[i] = w[i] * (xr[i] * inv_rms);
    }
  });
}

}  // namespace spqr::cpu
