// Device-side decoding of the packed SpQR format, shared by the SpQR kernels. Each function is the
// device twin of the host decoder in engine/format/spqr_layer.h and must give the same bits: fp32
// with one rounding per operation (__fsub_rn/__fmul_rn: the compiler may not fuse them into an
// FMA), exact fp16 -> fp32 conversion.
#pragma once

#include <cuda_fp16.h>

#include <cstdint>

#include "engine/backend/cuda/launch.cuh"
#include "engine/backend/cuda/spqr_device_layer.h"

namespace spqr {

__device__ __forceinline__ float F16BitsToFloat(uint16_t bits) {
  return __half2float(__ushort_as_half(bits));
}

// Code k of the bit row at `row` (engine/format/bit_packing.h's GetCode).
__device__ __forceinline__ uint32_t GetCodeDevice(const uint32_t* row, int64_t k, int bits) {
  const int64_t bit = k * bits;
  const int64_t word = bit >> 5;
  const int shift = static_cast<int>(bit & 31);
  uint64_t v = __ldg(row + word) >> shift;
  if (shift + bits > 32) v |= static_cast<uint64_t>(__ldg(row + word + 1)) << (32 - shift);
  return static_cast<uint32_t>(v) & ((1u << bits) - 1u);
}

// s * (float(code) - z) with s, z fp16 (DequantSecondLevel / DequantWeight's shape).
__device__ __forceinline__ float DequantDevice(uint32_t code, float scale, float zero) {
  return __fmul_rn(scale, __fsub_rn(static_cast<float>(code), zero));
}

// v rounded to fp16 (nearest even) and back: RoundToF16 of the format's "fp16 arithmetic" variant.
__device__ __forceinline__ float RoundToF16Device(float v) {
  return __half2float(__float2half_rn(v));
}
// DequantDevice in the layer's arithmetic: kF16 = every step rounded to fp16 (DequantWeightF16,
// DequantSecondLevelF16).
template <bool kF16>
__device__ __forceinline__ float DequantDeviceAs(uint32_t code, float scale, float zero) {
  if constexpr (kF16) {
    return RoundToF16Device(
        __fmul_rn(scale, RoundToF16Device(__fsub_rn(static_cast<float>(code), zero))));
  } else {
    return DequantDevice(code, scale, zero);
  }
}

struct DeviceGroupStats {
  float scale;
  float zero;
};

// First-level statistics of (row r, group g) (DecodeGroupStats; kF16: of an "fp16 arithmetic"
// layer).
template <bool kF16 = false>
__device__ __forceinline__ DeviceGroupStats DecodeGroupStatsDevice(const SpqrLayerDeviceView& l,
                                                                   int64_t r, int64_t g) {
  if (l.stats_bits == 16) {
    const int64_t i = r * l.num_groups + g;
    return {F16BitsToFloat(__ldg(l.scale_f16 + i)), F16BitsToFloat(__ldg(l.zero_f16 + i))};
  }
  const uint16_t* sl = l.second_level + ((r / l.beta2) * l.num_groups + g) * 4;
  const uint32_t qs = GetCodeDevice(l.scale_codes + r * l.stat_row_words, g, l.stats_bits);
  const uint32_t qz = GetCodeDevice(l.zero_codes + r * l.stat_row_words, g, l.stats_bits);
  return {DequantDeviceAs<kF16>(qs, F16BitsToFloat(__ldg(sl + 0)), F16BitsToFloat(__ldg(sl + 1))),
          DequantDeviceAs<kF16>(qz, F16BitsToFloat(__ldg(sl + 2)), F16BitsToFloat(__ldg(sl + 3)))};
}

// Permuted column id of outlier k.
__device__ __forceinline__ int64_t OutlierColumnDevice(const SpqrLayerDeviceView& l, int64_t k) {
  return l.in_features > 65535 ? static_cast<int64_t>(__ldg(l.outlier_cols_u32 + k))
                               : static_cast<int64_t>(__ldg(l.outlier_cols_u16 + k));
}

}  // namespace spqr
