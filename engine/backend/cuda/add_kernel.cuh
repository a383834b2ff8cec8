// Kernel bodies of LaunchAddInPlace and LaunchAddBias (add.cuh), compiled by nvcc for the device
// and by g++ for the CPU harness (launch.cuh).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "engine/backend/cuda/launch.cuh"

namespace spqr::kernels {

inline constexpr int kAddThreads = 256;

__device__ __forceinline__ float BiasToF32(float v) { return v; }
__device__ __forceinline__ float BiasToF32(__half v) { return __half2float(v); }
__device__ __forceinline__ float BiasToF32(__nv_bfloat16 v) { return __bfloat162float(v); }

// Grid-stride loop over `count` elements.
__global__ void __launch_bounds__(kAddThreads)
    AddInPlaceKernel(float* __restrict__ x, const float* __restrict__ y, int64_t count) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kAddThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kAddThreads + threadIdx.x; i < count;
       i += stride) {
    x[i] = x[i] + y[i];
  }
}

// Grid: x over column tiles, y over rows.
template <typename T>
__global__ void __launch_bounds__(kAddThreads)
    AddBiasKernel(float* __restrict__ y, const T* __restrict__ bias, int64_t cols) {
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kAddThreads + threadIdx.x;
  if (col >= cols) return;
  float* row = y + static_cast<int64_t>(blockIdx.y) * cols;
  row[col] = row[col] + BiasToF32(bias[col]);
}

}  // namespace spqr::kernels
