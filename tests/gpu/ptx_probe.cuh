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

// cp.async: 32 threads copy a 256-int tile to shared memory in two commit groups, wait for both,
// and write the tile back out.
__global__ void CpAsyncProbeKernel(const int* in, int* out) {
  SPQR_SHARED_ARRAY(int4, tile4, 64);  // int4: the 16-byte alignment cp.async needs
  int* tile = reinterpret_cast<int*>(tile4);
  const int t = threadIdx.x;
  CpAsync<16>(tile + 4 * t, in + 4 * t);
  CpAsyncCommit();
  CpAsync<8>(tile + 128 + 4 * t, in + 128 + 4 * t);
  CpAsync<4>(tile + 130 + 4 * t, in + 130 + 4 * t);
  CpAsync<4>(tile + 131 + 4 * t, in + 131 + 4 * t);
  CpAsyncCommit();
  CpAsyncWait<0>();
  __syncthreads();
  for (int i = 0; i < 8; ++i) out[8 * t + i] = tile[8 * t + i];
}

inline void LaunchCpAsyncProbeKernel(const int* in, int* out) {
  SPQR_LAUNCH(CpAsyncProbeKernel, 1, 32, 0, nullptr, in, out);
}

inline void LaunchPtxProbeKernel(const uint32_t* in, uint32_t* out, int n) {
  SPQR_LAUNCH(PtxProbeKernel, (n + 63) / 64, 64, 0, nullptr, in, out, n);
}

}  // namespace spqr::testing
