// A kernel that runs the PTX wrappers of engine/backend/cuda/ptx.cuh on the device, so that
// ptx_wrappers_test.cc can compare the real instructions (on a GPU) with the host references the
// CPU harness uses. Compiled by nvcc in ptx_probe.cu and by g++ in tests/cuda_emu/ptx_probe_emu.cc.
#pragma once

#include <cuda_fp16.h>

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

// One warp: D = A B + C for A 16x16 fp16 row-major (loaded with ldmatrix from shared memory),
// B 16x8 fp16 given as B^T (8x16 row-major: mma's "col" layout, fragments read directly) and C,
// D 16x8 fp32 row-major, through mma.m16n8k16.
__global__ void MmaProbeKernel(const __half* a, const __half* bt, const float* c, float* d) {
  SPQR_SHARED_ARRAY(int4, a_tile4, 32);  // 256 halves, 16-byte aligned rows for ldmatrix
  __half* a_tile = reinterpret_cast<__half*>(a_tile4);
  const int lane = threadIdx.x;
  for (int i = lane; i < 256; i += 32) a_tile[i] = a[i];
  __syncwarp();
  const int quarter = lane / 8;  // (rows 0-7 | 8-15) x (cols 0-7 | 8-15), rows varying first
  const int row = lane % 8 + (quarter % 2) * 8;
  const int col = (quarter / 2) * 8;
  uint32_t af[4];
  LdMatrixX4(af, a_tile + row * 16 + col);
  const int g = lane / 4, t = lane % 4;
  const uint32_t bf[2] = {*reinterpret_cast<const uint32_t*>(bt + g * 16 + 2 * t),
                          *reinterpret_cast<const uint32_t*>(bt + g * 16 + 2 * t + 8)};
  const float cf[4] = {c[g * 8 + 2 * t], c[g * 8 + 2 * t + 1], c[(g + 8) * 8 + 2 * t],
                       c[(g + 8) * 8 + 2 * t + 1]};
  float df[4];
  MmaM16N8K16F16F32(df, af, bf, cf);
  d[g * 8 + 2 * t] = df[0];
  d[g * 8 + 2 * t + 1] = df[1];
  d[(g + 8) * 8 + 2 * t] = df[2];
  d[(g + 8) * 8 + 2 * t + 1] = df[3];
}

inline void LaunchMmaProbeKernel(const __half* a, const __half* bt, const float* c, float* d) {
  SPQR_LAUNCH(MmaProbeKernel, 1, 32, 0, nullptr, a, bt, c, d);
}

inline void LaunchCpAsyncProbeKernel(const int* in, int* out) {
  SPQR_LAUNCH(CpAsyncProbeKernel, 1, 32, 0, nullptr, in, out);
}

inline void LaunchPtxProbeKernel(const uint32_t* in, uint32_t* out, int n) {
  SPQR_LAUNCH(PtxProbeKernel, (n + 63) / 64, 64, 0, nullptr, in, out, n);
}

}  // namespace spqr::testing
