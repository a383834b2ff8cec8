// Kernel body of LaunchEmbedding (embedding.cuh), compiled by nvcc for the device and by g++ for
// the CPU harness (launch.cuh).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "engine/backend/cuda/embedding.cuh"
#include "engine/backend/cuda/launch.cuh"

namespace spqr::kernels {

inline constexpr int kEmbeddingThreads = 256;

__device__ __forceinline__ float ToFloat(float v) { return v; }
__device__ __forceinline__ float ToFloat(__half v) { return __half2float(v); }
__device__ __forceinline__ float ToFloat(__nv_bfloat16 v) { return __bfloat162float(v); }

// Grid: x over column tiles, y over rows.
template <typename T>
__global__ void __launch_bounds__(kEmbeddingThreads)
    EmbeddingKernel(const T* __restrict__ table, const int32_t* __restrict__ ids,
                    float* __restrict__ output, int64_t hidden) {
  const int64_t row = blockIdx.y;
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kEmbeddingThreads + threadIdx.x;
  if (col >= hidden) return;
  output[row * hidden + col] = ToFloat(table[static_cast<int64_t>(ids[row]) * hidden + col]);
}

}  // namespace spqr::kernels
