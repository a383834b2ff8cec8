// RMSNorm as LLaMA computes it: out = x / sqrt(mean(x^2) + eps) * weight, row by row.
#pragma once

#include <cstdint>

#include "engine/model/tensor.h"

namespace spqr::cpu {

// `x` and `out` are [num_tokens, hidden] fp32 (may alias); `weight` is a [hidden] F32/F16/BF16
// tensor. Each row is computed the same way whatever num_tokens is.
void RmsNorm(const float* x, int64_t num_tokens, int64_t hidden, const TensorView& weight,
             float eps, float* out, int num_threads);

}  // namespace spqr::cpu
