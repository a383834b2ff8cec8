#include "engine/backend/cpu/swiglu.h"

#include <cmath>

namespace spqr::cpu {

void SwiGlu(const float* gate, const float* up, int64_t n, float* out, int num_threads) {
#pragma omp parallel for num_threads(num_threads) schedule(static) if (n > 16384)
  for (int64_t i = 0; i < n; ++i) {
    const float g = gate[i];
    out[i] = g / (1.0f + std::exp(-g)) * up[i];
  }
}

}  // namespace spqr::cpu
