// Host entry of the PTX wrapper probe (ptx_probe.cuh), defined by ptx_probe.cu (nvcc) or by
// tests/cuda_emu/ptx_probe_emu.cc (the CPU harness).
#pragma once

#include <cstdint>

namespace spqr::testing {

// in: [n][4] (a, b, c, selector) in device memory; out: [n][kPtxProbeOutputs] in device memory.
void LaunchPtxProbe(const uint32_t* in, uint32_t* out, int n);

// in, out: 256 ints in device memory; out = in through cp.async into shared memory.
void LaunchCpAsyncProbe(const int* in, int* out);

// a: 16x16 fp16 bits row-major; bt: B^T, 8x16 fp16 bits row-major; c, d: 16x8 fp32 row-major.
// d = a b + c through ldmatrix and mma.m16n8k16 (one warp). All in device memory.
void LaunchMmaProbe(const uint16_t* a, const uint16_t* bt, const float* c, float* d);

}  // namespace spqr::testing
