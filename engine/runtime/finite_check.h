// The engine's check for non-finite logits (NaN, +-Inf), shared by the engine step and the
// start-up warm-up.
#pragma once

#include <cmath>
#include <cstdint>

namespace spqr {

// Index of the first NaN or +-Inf among `n` values, -1 when all are finite.
inline int64_t FirstNonFinite(const float* values, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    if (!std::isfinite(values[i])) return i;
  }
  return -1;
}

}  // namespace spqr
