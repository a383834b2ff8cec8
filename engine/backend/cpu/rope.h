// Rotary position embedding in the Hugging Face "rotate half" convention: for i < d/2,
//   out[i]       = x[i] cos(p f_i) - x[i + d/2] sin(p f_i)
//   out[i + d/2] = x[i + d/2] cos(p f_i) + x[i] sin(p f_i)
// with the inverse frequencies f_i of transformers' rope_init_fn (default, linear, llama3).
#pragma once

#include <cstdint>
#include <vector>

#include "engine/model/model_config.h"

namespace spqr::cpu {

// The head_dim/2 inverse frequencies, computed as transformers does (fp32 pow, then the
// rope_scaling adjustment: /factor for "linear", the smooth band-wise rescale for "llama3").
std::vector<float> ComputeRopeInvFreq(int64_t head_dim, double rope_theta,
                                      const RopeScaling& scaling);

// Rotates, in place, `q_heads` consecutive heads at `q` and `k_heads` heads at `k` (each
// head_dim floats) of one token at `position`. `k` may be null when k_heads is 0.
void ApplyRope(float* q, int64_t q_heads, float* k, int64_t k_heads, int64_t head_dim,
               int64_t position, const float* inv_freq);

}  // namespace spqr::cpu
