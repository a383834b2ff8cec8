// Kernel bodies of LaunchSpqrGemv (spqr_gemv.cuh), compiled by nvcc for the device and by g++ for
// the CPU harness (launch.cuh).
#pragma once

#include <cstdint>

#include "engine/backend/cuda/launch.cuh"
#include "engine/backend/cuda/spqr_decode.cuh"
#include "engine/backend/cuda/spqr_device_layer.h"

namespace spqr::kernels {

inline constexpr int kSpqrGemvWarpsPerBlock = 4;
inline constexpr int kSpqrGemvMaxBatchPerPass = 8;

// x_perm[b][j] = x[b][perm[j]]: one read of x per call instead of one per output row.
__global__ void GatherPermutedKernel(const uint32_t* __restrict__ perm, const float* __restrict__ x,
                                     float* __restrict__ x_perm, int64_t n, int64_t count) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += stride) {
    const int64_t b = i / n;
    const int64_t j = i - b * n;
    x_perm[i] = x[b * n + __ldg(perm + j)];
  }
}

// One warp per output row r, B rows of x per pass. Lane l handles permuted columns l, l+32, ...;
// the group statistics are decoded again only when the group changes. kF16: an "fp16 arithmetic"
// layer (weights h(s * h(q - z)); an outlier's weight is h(w + residual), so its sparse term is
// (h(w + residual) - w) x with w decoded again).
template <int B, bool kF16 = false>
__global__ void __launch_bounds__(kSpqrGemvWarpsPerBlock * 32)
    SpqrGemvKernel(SpqrLayerDeviceView l, const float* __restrict__ x_perm, float* y,
                   int64_t y_stride) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kSpqrGemvWarpsPerBlock + threadIdx.x / 32;
  if (r >= l.out_features) return;
  const int lane = threadIdx.x % 32;
  const int64_t n = l.in_features;
  const uint32_t* codes = l.weight_codes + r * l.weight_row_words;
  float acc[B];
#pragma unroll
  for (int b = 0; b < B; ++b) acc[b] = 0.0f;

  int64_t cached_group = -1;
  DeviceGroupStats s{0.0f, 0.0f};
  for (int64_t j = lane; j < n; j += 32) {
    const int64_t g = j / l.beta1;
    if (g != cached_group) {
      s = DecodeGroupStatsDevice<kF16>(l, r, g);
      cached_group = g;
    }
    const float w = DequantDeviceAs<kF16>(GetCodeDevice(codes, j, l.wbits), s.scale, s.zero);
#pragma unroll
    for (int b = 0; b < B; ++b) acc[b] += w * x_perm[b * n + j];
  }
  // Outliers: W_hat = dense + residuals, so their contribution is a separate sparse dot.
  const int64_t last = __ldg(l.outlier_row_offsets + r + 1);
  for (int64_t k = __ldg(l.outlier_row_offsets + r) + lane; k < last; k += 32) {
    const int64_t j = OutlierColumnDevice(l, k);
    float v = F16BitsToFloat(__ldg(l.outlier_values + k));
    if constexpr (kF16) {
      const DeviceGroupStats st = DecodeGroupStatsDevice<true>(l, r, j / l.beta1);
      const float w = DequantDeviceAs<true>(GetCodeDevice(codes, j, l.wbits), st.scale, st.zero);
      v = __fsub_rn(RoundToF16Device(__fadd_rn(w, v)), w);
    }
#pragma unroll
    for (int b = 0; b < B; ++b) acc[b] += v * x_perm[b * n + j];
  }
#pragma unroll
  for (int b = 0; b < B; ++b) {
    for (int offset = 16; offset > 0; offset >>= 1) {
      acc[b] += __shfl_xor_sync(0xffffffffu, acc[b], offset);
    }
  }
  if (lane == 0) {
#pragma unroll
    for (int b = 0; b < B; ++b) y[b * y_stride + r] = acc[b];
  }
}

}  // namespace spqr::kernels
