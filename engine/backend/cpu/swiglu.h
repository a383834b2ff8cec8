// The SwiGLU gate of the LLaMA MLP: out = silu(gate) * up, silu(x) = x / (1 + exp(-x)).
#pragma once

#include <cstdint>

namespace spqr::cpu {

// Elementwise over n floats; `out` may alias `gate` or `up`.
void SwiGlu(const float* gate, const float* up, int64_t n, float* out, int num_threads);

}  // namespace spqr::cpu
