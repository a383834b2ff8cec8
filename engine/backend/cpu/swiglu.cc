#include "engine/backend/cpu/swiglu.h"

#include <cmath>

#include "engine/backend/cpu/worker_pool.h"

namespace spqr::cpu {

void SwiGlu(const float* gate, const float* up, int64_t n, float* out, int num_threads) {
  ParallelForStatic(n > 16384 ? num_threads : 1, n, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const float g = gate[i];
      out[i] = g / (1.0f + std::exp(-g)) * up[i];
    }
  });
}

}  // namespace spqr::cpu
