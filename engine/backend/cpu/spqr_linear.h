// CPU linear layer over a packed SpQR layer (LinearTensors::spqr): y = x W_hat^T (+ b) computed by
// the format module's packed kernel (engine/format/spqr_matmul.h), which decodes weight codes and
// bilevel statistics on the fly, applies the outliers and reads the inputs through the act-order
// permutation (one gather per token per call). The dense W_hat is never materialized.
//
// Speed (AVX2+FMA builds): for wbits <= 4 the weight codes are read straight from the packed bit
// row (one 32-bit load per 8 codes, per-lane shifts), weights are formed 8 lanes at a time in
// registers, statistics codes are unpacked a row at a time and second-level fp16 values converted
// with F16C; every one of these computes the same values as the format's reference decode.
//
// Threading: output rows are split into chunks (a multiple of beta2, so each chunk converts a
// second-level block once) that OpenMP threads take dynamically.
//
// Batch independence: y[t, r] does not depend on the other tokens of the call. With beta1 in
// {8, 16, 32} each packed row is decoded once per call and its weights, computed in registers,
// feed up to 4 tokens at a time with exactly the per-token arithmetic of the format's fused
// batch-1 kernel (so every token equals SpqrMatmulRows(batch = 1) bit for bit); other group widths
// decode a row once into a buffer and dot it with every token (SpqrMatmulRows), also per-token
// identical.
#pragma once

#include "engine/backend/cpu/linear.h"
#include "engine/backend/cpu/spqr_tile_kernel.h"
#include "engine/backend/cpu/spqr_tile_layout.h"
#include "engine/model/llama_weights.h"

namespace spqr::cpu {

// Requires layer.spqr != nullptr and x.in_features == layer.in_features; y holds
// x.num_tokens * layer.out_features floats.
void SpqrLinear(const LinearTensors& layer, const PackedActivations& x, float* y, int num_threads);

// The int8 kernel over the layer's tile layout (spqr_tile_kernel.h for its numerics): gathers the
// permuted inputs and quantizes them per token once, then splits the row tiles statically across
// threads (each thread one contiguous range, so there is no scheduling traffic per tile). Adds the
// bias. Per-token results do not depend on the batch or the thread count.
void SpqrLinearTiled(const SpqrTileLayout& tiles, const LinearTensors& layer,
                     const PackedActivations& x, float* y, int num_threads, TileIsa isa);

// Bytes of the packed layer the kernel reads per call (codes, statistics, outliers, permutation).
int64_t SpqrLinearBytes(const LinearTensors& layer);

}  // namespace spqr::cpu
