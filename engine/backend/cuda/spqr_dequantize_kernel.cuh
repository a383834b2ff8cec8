// Kernel body of LaunchSpqrDequantize (spqr_dequantize.cuh), compiled by nvcc for the device and by
// g++ for the CPU harness (launch.cuh).
#pragma once

#include <cuda_fp16.h>

#include <cstdint>

#include "engine/backend/cuda/launch.cuh"
#include "engine/backend/cuda/spqr_decode.cuh"
#include "engine/backend/cuda/spqr_device_layer.h"

namespace spqr::kernels {

inline constexpr int kSpqrDequantizeThreads = 256;

__device__ __forceinline__ void DequantizeStore(float* out, int64_t i, float v) { out[i] = v; }
__device__ __forceinline__ void DequantizeStore(__half* out, int64_t i, float v) {
  out[i] = __float2half_rn(v);
}

// One block per output row. Outliers are added to the dense value before the single store (a
// thread finds the outlier of its column by binary search in the row's sorted column ids), so the
// result is w + f(v) exactly as the host decoder computes it, with no second pass over memory.
// kF16: the "fp16 arithmetic" variant (every step, the outlier sum too, rounded to fp16).
template <typename OutT, bool kF16 = false>
__global__ void __launch_bounds__(kSpqrDequantizeThreads)
    SpqrDequantizeKernel(SpqrLayerDeviceView l, OutT* out) {
  const int64_t r = blockIdx.x;
  const int64_t n = l.in_features;
  const uint32_t* codes = l.weight_codes + r * l.weight_row_words;
  const int64_t first = __ldg(l.outlier_row_offsets + r);
  const int64_t last = __ldg(l.outlier_row_offsets + r + 1);
  for (int64_t j = threadIdx.x; j < n; j += kSpqrDequantizeThreads) {
    const DeviceGroupStats s = DecodeGroupStatsDevice<kF16>(l, r, j / l.beta1);
    float w = DequantDeviceAs<kF16>(GetCodeDevice(codes, j, l.wbits), s.scale, s.zero);
    int64_t lo = first;
    int64_t hi = last;
    while (lo < hi) {  // first outlier with column >= j
      const int64_t mid = (lo + hi) / 2;
      if (OutlierColumnDevice(l, mid) < j) {
        lo = mid + 1;
      } else {
        hi = mid;
      }
    }
    if (lo < last && OutlierColumnDevice(l, lo) == j) {
      w = __fadd_rn(w, F16BitsToFloat(__ldg(l.outlier_values + lo)));
      if constexpr (kF16) w = RoundToF16Device(w);
    }
    DequantizeStore(out, r * n + __ldg(l.perm + j), w);
  }
}

}  // namespace spqr::kernels
