// Kernel body of LaunchCastF32 (cast_f32.cuh), compiled by nvcc for the device and by g++ for the
// CPU harness (launch.cuh).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "engine/backend/cuda/launch.cuh"

namespace spqr::kernels {

inline constexpr int kCastF32Threads = 256;

__device__ __forceinline__ void CastStore(__half* out, int64_t i, float v) {
  out[i] = __float2half_rn(v);
}
__device__ __forceinline__ void CastStore(__nv_bfloat16* out, int64_t i, float v) {
  out[i] = __float2bfloat16_rn(v);
}

// Grid-stride loop over `count` elements.
template <typename OutT>
__global__ void __launch_bounds__(kCastF32Threads)
    CastF32Kernel(const float* __restrict__ input, OutT* __restrict__ output, int64_t count) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kCastF32Threads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kCastF32Threads + threadIdx.x; i < count;
       i += stride) {
    CastStore(output, i, input[i]);
  }
}

}  // namespace spqr::kernels
