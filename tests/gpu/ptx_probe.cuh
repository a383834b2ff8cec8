// A kernel that runs the PTX wrappers of engine/backend/cuda/ptx.cuh on the device, so that
// ptx_wrappers_test.cc can compare the real instructions (on a GPU) with the host references the
// CPU harness uses. Compiled by nvcc in ptx_probe.cu and by g++ in tests/cuda_emu/ptx_probe_emu.cc.
#pragma once

#include <cstdint>

#include "engine/backend/cuda/launch.cuh"
#include "engine/backend/cuda/ptx.cuh"

namespace spqr::testing {

inline constexpr int kPtxProbeOutputs = 5;

// For element i of (a, b, c, selector): Lop3 with three tables, Prmt with and without sign
// replication.
__global__ void PtxProbeKernel(const uint32_t* in, uint32_t* out, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const uint32_t a = in[4 * i], b = in[4 * i + 1], c = in[4 * i + 2], s = in[4 * i + 3];
  uint32_t* o = out + kPtxProbeOutputs * i;
  o[0] = Lop3<0xEA>(a, b, c);
  o[1] = Lop3<0x96>(a, b, c);
  o[2] = Lop3<0xCA>(a, b, c);
  o[3] = Prmt(a, b, s & 0x7777u);
  o[4] = Prmt(a, b, s);
}

inline void LaunchPtxProbeKernel(const uint32_t* in, uint32_t* out, int n) {
  SPQR_LAUNCH(PtxProbeKernel, (n + 63) / 64, 64, 0, nullptr, in, out, n);
}

}  // namespace spqr::testing
