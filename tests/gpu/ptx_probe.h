// Host entry of the PTX wrapper probe (ptx_probe.cuh), defined by ptx_probe.cu (nvcc) or by
// tests/cuda_emu/ptx_probe_emu.cc (the CPU harness).
#pragma once

#include <cstdint>

namespace spqr::testing {

// in: [n][4] (a, b, c, selector) in device memory; out: [n][kPtxProbeOutputs] in device memory.
void LaunchPtxProbe(const uint32_t* in, uint32_t* out, int n);

// in, out: 256 ints in device memory; out = in through cp.async into shared memory.
void LaunchCpAsyncProbe(const int* in, int* out);

}  // namespace spqr::testing
