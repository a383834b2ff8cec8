// The exact dense kernel for many tokens (prefill): a K-blocked, register-tiled GEMM over weights
// converted to fp32 one cache-resident panel at a time.
//
// Numerics: the same as every other path of cpu::Linear (linear.h). For token t and output row o,
// kLanes fp32 accumulator lanes (simd.h) take, for k = 0, kLanes, 2 kLanes, ... over the
// zero-padded input width, acc_i = fma(w[o, k+i], x[t, k+i], acc_i); then
// y = VReduceAdd(acc) + bias[o] (+0 without a bias). Blocking over k only pauses this sequence:
// between K-blocks the lanes are stored to a per-thread buffer and reloaded, never reduced, so the
// bits do not depend on the blocking, the number of tokens or the thread count, and equal
// LinearExactReference's.
//
// Why blocked: the row-tile dot-product kernel this replaces for prefill streamed every weight
// and activation row from L2 once per 4x4 output tile (its loads, not its FMAs, bounded it). Here
// a micro-tile of kMr rows x kNt tokens reads a weight panel slice that stays in L1 and
// activations that stay in L1 across the rows of a sub-block, so the FMA units set the pace.
#pragma once

#include <cstdint>

#include "engine/backend/cpu/linear.h"
#include "engine/model/llama_weights.h"

namespace spqr::cpu {

// y[t * out + o] = sum_k W[o, k] x[t, k] + bias[o] for F32/F16/BF16 weights, any number of tokens
// (meant for many; cpu::Linear calls it above its decode sizes). Same contract as cpu::Linear.
void LinearBlocked(const LinearTensors& layer, const PackedActivations& x, float* y,
                   int num_threads);

// The arithmetic documented above, one output at a time in portable C++ (the test reference).
void LinearExactReference(const LinearTensors& layer, const PackedActivations& x, float* y);

}  // namespace spqr::cpu
