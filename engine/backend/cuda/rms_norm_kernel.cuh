// Kernel body of LaunchRmsNorm (rms_norm.cuh), compiled by nvcc for the device and by g++ for the
// CPU harness (launch.cuh).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "engine/backend/cuda/launch.cuh"

namespace spqr::kernels {

inline constexpr int kRmsNormThreads = 256;

__device__ __forceinline__ float RmsNormWeight(const __half* w, int64_t i) {
  return __half2float(w[i]);
}
__device__ __forceinline__ float RmsNormWeight(const __nv_bfloat16* w, int64_t i) {
  return __bfloat162float(w[i]);
}
__device__ __forceinline__ float RmsNormWeight(const float* w, int64_t i) { return w[i]; }

// One block of kRmsNormThreads per row: each thread sums the squares of a strided slice, the block
// reduces through warp shuffles and one shared-memory hop, then every thread scales its slice.
template <typename WeightT>
__global__ void __launch_bounds__(kRmsNormThreads)
    RmsNormKernel(const float* input, const WeightT* __restrict__ weight, float* output,
                  int64_t dim, int64_t in_stride, int64_t out_stride, float eps) {
  const float* x = input + blockIdx.x * in_stride;
  float* y = output + blockIdx.x * out_stride;
  float sum = 0.0f;
  for (int64_t i = threadIdx.x; i < dim; i += kRmsNormThreads) sum += x[i] * x[i];
  for (int offset = 16; offset > 0; offset >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
  SPQR_SHARED_ARRAY(float, warp_sums, kRmsNormThreads / 32);
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (lane == 0) warp_sums[warp] = sum;
  __syncthreads();
  float total = 0.0f;
  for (int w = 0; w < kRmsNormThreads / 32; ++w) total += warp_sums[w];
  const float scale = rsqrtf(total / static_cast<float>(dim) + eps);
  // Reading x again (rather than caching it in registers) keeps any dim supported; the row is
  // still in L1/L2 from the first pass. In place (output == input) is safe: every thread reads
  // only the elements it writes after the barrier above.
  for (int64_t i = threadIdx.x; i < dim; i += kRmsNormThreads) {
    y[i] = RmsNormWeight(weight, i) * (x[i] * scale);
  }
}

}  // namespace spqr::kernels
