// Kernel body of LaunchGatherRows (gather_rows.cuh), compiled by nvcc for the device and by g++
// for the CPU harness (launch.cuh).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "engine/backend/cuda/launch.cuh"

namespace spqr::kernels {

inline constexpr int kGatherRowsThreads = 256;

__device__ __forceinline__ float ToF32(float v) { return v; }
__device__ __forceinline__ float ToF32(__half v) { return __half2float(v); }
__device__ __forceinline__ float ToF32(__nv_bfloat16 v) { return __bfloat162float(v); }

// One block per output row, threads stride over the columns.
template <typename T>
__global__ void __launch_bounds__(kGatherRowsThreads)
    GatherRowsKernel(const T* __restrict__ table, int64_t table_rows,
                     const int32_t* __restrict__ indices, float* __restrict__ output,
                     int64_t cols) {
  const int64_t row = blockIdx.x;
  const int64_t index = indices[row];
  float* out = output + row * cols;
  if (index < 0 || index >= table_rows) {
    for (int64_t c = threadIdx.x; c < cols; c += kGatherRowsThreads)
      out[c] = __int_as_float(0x7fc00000);
    return;
  }
  const T* in = table + index * cols;
  for (int64_t c = threadIdx.x; c < cols; c += kGatherRowsThreads) out[c] = ToF32(in[c]);
}

}  // namespace spqr::kernels
