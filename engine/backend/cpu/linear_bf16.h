// Dense linear layer over BF16 weights with BF16 dot products (x86 AVX512-BF16 VDPBF16PS): the
// weights are read as stored (no conversion), the activations are rounded to bf16 once per call,
// and each instruction does 32 multiply-adds, twice the fp32 FMA rate.
//
// Numerics ("bf16" dense kernel). Activations are rounded to bf16 (round to nearest even). For
// output (t, o), lane i (0..15) of one fp32 accumulator takes, for k = 32s + 2i (s = 0, 1, ...),
//   acc_i = fma(w[k+1], x[k+1], acc_i);  acc_i = fma(w[k], x[k], acc_i)
// (the products of two bf16 values are exact in fp32, so each step rounds once; VDPBF16PS's
// documented order, with denormal inputs and results flushed to zero), over the zero-padded k
// range; then y = tree sum of the 16 lanes ((i, i+8), then (i, i+4), (i, i+2), (0, 1)) + bias.
// The implementation and the scalar reference (LinearBf16Reference) compute exactly this, so a
// token's result depends neither on the other tokens of the call nor on the thread count.
// What rounding the activations costs in perplexity is measured against the exact fp32 kernel
// (docs/cpu-performance.md).
#pragma once

#include <cstdint>

#include "engine/backend/cpu/linear.h"
#include "engine/model/llama_weights.h"

namespace spqr::cpu {

// Whether this CPU has AVX512-BF16 (checked with CPUID at run time).
bool Bf16DotSupported();

// y = x W^T (+ b) for a dense BF16 layer with the bf16 kernel; requires Bf16DotSupported() and
// layer.weight.dtype == BF16.
void LinearBf16(const LinearTensors& layer, const PackedActivations& x, float* y, int num_threads);

// The same arithmetic one output at a time in portable C++ (the test reference).
void LinearBf16Reference(const LinearTensors& layer, const PackedActivations& x, float* y);

}  // namespace spqr::cpu
