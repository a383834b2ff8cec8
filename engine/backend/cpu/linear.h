// Dense linear layer y = x W^T (+ b) over weights kept in their stored dtype (F32/F16/BF16).
//
// Decode-sized calls (up to 4 tokens) convert the weights to fp32 in registers, straight from
// memory; larger calls go to the K-blocked GEMM of linear_gemm.h, which converts cache-resident
// weight panels once per 64 tokens. Rows are split across threads.
//
// Batch independence: y[t, o] is always the same sequence of vector FMAs over the zero-padded
// k range followed by the same horizontal reduction, whatever the number of tokens, the tile
// shapes or the thread count, so a token's result does not depend on the rest of the batch.
#pragma once

#include <cstdint>
#include <vector>

#include "engine/model/llama_weights.h"

namespace spqr::cpu {

// Activations laid out for Linear: [num_tokens, stride] fp32, stride = in_features rounded up to
// the SIMD width, padding zeroed. Pack once, use for every projection that reads the same input.
struct PackedActivations {
  std::vector<float> data;
  int64_t num_tokens = 0;
  int64_t in_features = 0;
  int64_t stride = 0;
};

// Packs x ([num_tokens, in_features], row-major) into `out` (reusing its storage).
void PackActivations(const float* x, int64_t num_tokens, int64_t in_features,
                     PackedActivations* out);

// y[t * layer.out_features + r] += bias[r] for every token (nothing without a bias): the bias step
// of the kernels that compute the product first (SpQR, bf16).
void AddBias(const LinearTensors& layer, int64_t num_tokens, float* y);

// y[t * layer.out_features + o] = sum_k W[o, k] x[t, k] + bias[o]. Requires
// x.in_features == layer.in_features; y holds x.num_tokens * layer.out_features floats.
void Linear(const LinearTensors& layer, const PackedActivations& x, float* y, int num_threads);

}  // namespace spqr::cpu
