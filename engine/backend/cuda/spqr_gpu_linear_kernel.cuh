// Kernel bodies of LaunchSpqrGpuLinear / LaunchSpqrGpuDequantize (spqr_gpu_linear.cuh) on the GPU
// layout (spqr_gpu_layout.h), compiled by nvcc for the device and by g++ for the CPU harness
// (launch.cuh). The dequantize kernel decodes exactly as the format (spqr_layer.h), bit for bit:
// w = scale * (float(code) - zero) with __fsub_rn/__fmul_rn (never contracted into an FMA); the
// decode kernel uses a one-FMA form of the same weight, accurate to a few fp32 ulps (see there).
#pragma once

#include <cuda_fp16.h>

#include <cstdint>

#include "engine/backend/cuda/launch.cuh"
#include "engine/backend/cuda/ptx.cuh"
#include "engine/backend/cuda/spqr_gpu_layout.h"

namespace spqr::kernels {

inline constexpr int kSpqrGpuDecodeWarps = 4;  // warps per block of the decode kernel
inline constexpr int kSpqrGpuDequantizeThreads = 256;
inline constexpr int kSpqrGpuGatherThreads = 256;

__device__ __forceinline__ float SpqrGpuHalfBits(uint32_t bits) {
  return __half2float(__ushort_as_half(static_cast<unsigned short>(bits & 0xffffu)));
}

// float(code) for a code in the low bits of `bits` under `mask`, without an int->float conversion
// (a quarter-rate instruction): (bits & mask) | 0x4b000000 is the fp32 value 2^23 + code, and
// subtracting 2^23 is exact. One lop3 and one add.
__device__ __forceinline__ float SpqrGpuCodeToFloat(uint32_t bits, uint32_t mask) {
  return __fsub_rn(__uint_as_float(Lop3<0xEA>(bits, mask, 0x4b000000u)), 8388608.0f);
}

__device__ __forceinline__ float SpqrGpuDequant(float code, float scale, float zero) {
  return __fmul_rn(scale, __fsub_rn(code, zero));
}

// The format's "fp16 arithmetic" variant (spqr_layer.h): v rounded to fp16 (nearest even) and
// back; for fp16 operands an fp32 operation followed by this rounding is the fp16 operation.
__device__ __forceinline__ float SpqrGpuRoundF16(float v) {
  return __half2float(__float2half_rn(v));
}
// SpqrGpuDequant in the fp16 arithmetic (kF16) or as above.
template <bool kF16>
__device__ __forceinline__ float SpqrGpuDequantAs(float code, float scale, float zero) {
  if constexpr (kF16) {
    return SpqrGpuRoundF16(__fmul_rn(scale, SpqrGpuRoundF16(__fsub_rn(code, zero))));
  } else {
    return SpqrGpuDequant(code, scale, zero);
  }
}

struct SpqrGpuStats {
  float scale;
  float zero;
};

// First-level statistics of (row r, group g); `block` = r / beta2 (DecodeGroupStats' values; kF16:
// those of an "fp16 arithmetic" layer).
template <bool kF16 = false>
__device__ __forceinline__ SpqrGpuStats SpqrGpuGroupStats(const SpqrGpuLayerView& l, int64_t r,
                                                          int64_t block, int64_t g) {
  const uint32_t* row = l.stats + r * l.stat_row_words;
  if (l.stats_bits == 16) {
    const uint32_t v = __ldg(row + g);
    return {SpqrGpuHalfBits(v), SpqrGpuHalfBits(v >> 16)};
  }
  const int sb = l.stats_bits;
  const int64_t bit = g * 2 * sb;
  const int shift = static_cast<int>(bit & 31);
  uint32_t pair = __ldg(row + (bit >> 5)) >> shift;
  if (shift + 2 * sb > 32) pair |= __ldg(row + (bit >> 5) + 1) << (32 - shift);
  const uint32_t mask = (1u << sb) - 1u;
  // Four fp16 values, little endian: x = {scale of scales, zero of scales}, y = {.. of zeros}.
  const uint2 s = __ldg(reinterpret_cast<const uint2*>(l.second_level) + block * l.num_groups + g);
  return {SpqrGpuDequantAs<kF16>(static_cast<float>(pair & mask), SpqrGpuHalfBits(s.x),
                                 SpqrGpuHalfBits(s.x >> 16)),
          SpqrGpuDequantAs<kF16>(static_cast<float>((pair >> sb) & mask), SpqrGpuHalfBits(s.y),
                                 SpqrGpuHalfBits(s.y >> 16))};
}

// The raw words of (row r, group g)'s statistics, loaded one group ahead by the decode kernel so
// that their latency overlaps the current group's arithmetic; SpqrGpuStatsFromRaw decodes them to
// exactly SpqrGpuGroupStats' values.
struct SpqrGpuRawStats {
  uint32_t lo, hi;  // the statistics word(s): the fp16 pair, or the bit-stream words of the pair
  uint2 second;     // the four second-level fp16 values (bilevel statistics only)
};

__device__ __forceinline__ SpqrGpuRawStats SpqrGpuLoadStats(const SpqrGpuLayerView& l, int64_t r,
                                                            int64_t block, int64_t g) {
  const uint32_t* row = l.stats + r * l.stat_row_words;
  SpqrGpuRawStats raw{};
  if (l.stats_bits == 16) {
    raw.lo = __ldg(row + g);
    return raw;
  }
  const int64_t bit = g * 2 * l.stats_bits;
  raw.lo = __ldg(row + (bit >> 5));
  if ((bit & 31) + 2 * l.stats_bits > 32) raw.hi = __ldg(row + (bit >> 5) + 1);
  raw.second = __ldg(reinterpret_cast<const uint2*>(l.second_level) + block * l.num_groups + g);
  return raw;
}

template <bool kF16 = false>
__device__ __forceinline__ SpqrGpuStats SpqrGpuStatsFromRaw(const SpqrGpuLayerView& l,
                                                            const SpqrGpuRawStats& raw, int64_t g) {
  if (l.stats_bits == 16) return {SpqrGpuHalfBits(raw.lo), SpqrGpuHalfBits(raw.lo >> 16)};
  const int sb = l.stats_bits;
  const int shift = static_cast<int>((g * 2 * sb) & 31);
  uint32_t pair = raw.lo >> shift;
  if (shift + 2 * sb > 32) pair |= raw.hi << (32 - shift);
  const uint32_t mask = (1u << sb) - 1u;
  return {
      SpqrGpuDequantAs<kF16>(static_cast<float>(pair & mask), SpqrGpuHalfBits(raw.second.x),
                             SpqrGpuHalfBits(raw.second.x >> 16)),
      SpqrGpuDequantAs<kF16>(static_cast<float>((pair >> sb) & mask), SpqrGpuHalfBits(raw.second.y),
                             SpqrGpuHalfBits(raw.second.y >> 16))};
}

// Outlier record k: permuted column and fp16 residual.
__device__ __forceinline__ void SpqrGpuOutlier(const SpqrGpuLayerView& l, int64_t k, int64_t* col,
                                               float* value) {
  if (l.in_features > 65535) {
    *col = __ldg(l.outlier_records + 2 * k);
    *value = SpqrGpuHalfBits(__ldg(l.outlier_records + 2 * k + 1));
  } else {
    const uint32_t v = __ldg(l.outlier_records + k);
    *col = v & 0xffffu;
    *value = SpqrGpuHalfBits(v >> 16);
  }
}

// Code of (row r, permuted column j), read through the tile layout (any wbits).
__device__ __forceinline__ uint32_t SpqrGpuCodeAt(const SpqrGpuLayerView& l, int64_t r, int64_t j) {
  const int wb = l.wbits;
  const int64_t chunks = l.lane_chunks;
  const int64_t c = j / kSpqrGpuChunkCols, tile = c >> 5;
  const int64_t active = chunks - tile * 32 < 32 ? chunks - tile * 32 : 32;
  const int64_t bit = (j % kSpqrGpuChunkCols) * wb;
  const int shift = static_cast<int>(bit & 31);
  // 32-bit word w32 of chunk c's stream (spqr_gpu_layout.h).
  const uint32_t* base = l.codes + ((r * chunks + tile * 32) * wb + (c & 31)) * 4;
  auto stream_word = [&](int64_t w32) { return __ldg(base + (w32 >> 2) * active * 4 + (w32 & 3)); };
  uint32_t bits = stream_word(bit >> 5) >> shift;
  if (shift + wb > 32) bits |= stream_word((bit >> 5) + 1) << (32 - shift);
  return bits & ((1u << wb) - 1u);
}

// xt[j * bpad + b] = x[b * n + perm[j]] for b < batch, 0 for batch <= b < bpad: the permuted inputs
// of the decode kernel, column-major so that one column's values for all sequences are adjacent.
__global__ void SpqrGpuGatherTransposedKernel(const uint32_t* __restrict__ perm,
                                              const float* __restrict__ x, float* __restrict__ xt,
                                              int64_t n, int64_t batch, int64_t bpad) {
  const int64_t count = n * bpad;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += stride) {
    const int64_t j = i / bpad;
    const int64_t b = i - j * bpad;
    xt[i] = b < batch ? x[b * n + __ldg(perm + j)] : 0.0f;
  }
}

// xh[b * n + j] = fp16(x[b * n + perm[j]]) (round to nearest even): the GEMM path's activations.
__global__ void SpqrGpuGatherF16Kernel(const uint32_t* __restrict__ perm,
                                       const float* __restrict__ x, __half* __restrict__ xh,
                                       int64_t n, int64_t count) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += stride) {
    const int64_t b = i / n;
    const int64_t j = i - b * n;
    xh[i] = __float2half_rn(x[b * n + __ldg(perm + j)]);
  }
}

// Decode product for up to B sequences (B in 1, 2, 4, 8, 16), wbits W (2..4), beta1 % 8 == 0.
// Each warp owns R consecutive output rows; lane l walks chunks l, l + 32, ... of those rows (a
// chunk = 128 permuted columns), loading each row's chunk with W coalesced 128-bit loads, so every
// weight is read once per call for all B sequences. The row's outliers are added in the same kernel
// (lanes stride over its CSR records), then each of the R x B sums is reduced across the warp.
//
// Weight arithmetic, 4 instructions per weight at B = 1 (shift, lop3, 2 FMA): a code q at bit p of
// a register is moved to bits [23 - W, 23) by one compile-time shift (two and an or where it
// straddles two words, 2 codes in 32 for W = 3), and one lop3 ((v & mask) | 0x3f800000) makes
// the fp32 value f = 1 + q 2^-W exactly. With a = scale 2^W (exact) and c = scale (2^W + zero)
// computed once per (row, group), w' = fma(a, f, -c) = scale (q - zero) up to
// |w' - w| <= 3 2^-24 |scale| (2^W + |zero|) (the rounding of c and of the FMA; w is the format's
// exact decode). The sum is then acc += w' x in fp32 FMAs. LaunchSpqrGpuDequantize keeps the exact
// decode; this kernel trades the last bits of each weight for three instructions per weight.
// kF16: an "fp16 arithmetic" layer (spqr_layer.h), decoded exactly instead: q = (f - 1) 2^W
// (exact), w = h(scale * h(q - zero)) with the variant's statistics, and an outlier adds (h(w + v)
// - w) x, w decoded again (about five more instructions per weight).
template <int W, int B, int R, bool kF16 = false>
__global__ void __launch_bounds__(kSpqrGpuDecodeWarps * 32)
    SpqrGpuDecodeKernel(SpqrGpuLayerView l, const float* __restrict__ xt, float* __restrict__ y,
                        int64_t batch) {
  const int lane = threadIdx.x & 31;
  const int64_t row0 =
      (static_cast<int64_t>(blockIdx.x) * kSpqrGpuDecodeWarps + threadIdx.x / 32) * R;
  const int64_t m = l.out_features;
  if (row0 >= m) return;  // the whole warp leaves together
  const int64_t n = l.in_features;
  const int64_t chunks = l.lane_chunks;
  const int beta1 = l.beta1;
  constexpr int kTop = 23 - W;  // f's code bits are [kTop, 23)
  constexpr uint32_t kMask = ((1u << W) - 1u) << kTop;
  constexpr float kScale = static_cast<float>(1 << W);

  int64_t rows[R], blocks[R];
#pragma unroll
  for (int i = 0; i < R; ++i) {
    rows[i] = row0 + i < m ? row0 + i : m - 1;  // rows past m are computed but not stored
    blocks[i] = rows[i] / l.beta2;
  }
  float acc[R][B];
#pragma unroll
  for (int i = 0; i < R; ++i) {
#pragma unroll
    for (int b = 0; b < B; ++b) acc[i][b] = 0.0f;
  }

  const uint4* codes = reinterpret_cast<const uint4*>(l.codes);
  for (int64_t c = lane; c < chunks; c += 32) {
    const int64_t tile = c >> 5;
    const int64_t active = chunks - tile * 32 < 32 ? chunks - tile * 32 : 32;
    uint32_t cw[R][4 * W];
#pragma unroll
    for (int i = 0; i < R; ++i) {
      const uint4* base = codes + (rows[i] * chunks + tile * 32) * W + (c & 31);
#pragma unroll
      for (int q = 0; q < W; ++q) {
        const uint4 v = __ldg(base + q * active);
        cw[i][4 * q + 0] = v.x;
        cw[i][4 * q + 1] = v.y;
        cw[i][4 * q + 2] = v.z;
        cw[i][4 * q + 3] = v.w;
      }
    }
    const int64_t j0 = c * kSpqrGpuChunkCols;
    int64_t g = j0 / beta1;
    int off = static_cast<int>(j0 - g * beta1);
    const int64_t last_group = l.num_groups - 1;
    SpqrGpuRawStats raw[R];  // statistics of group g (then prefetched: g + 1)
#pragma unroll
    for (int i = 0; i < R; ++i) raw[i] = SpqrGpuLoadStats(l, rows[i], blocks[i], g);
    float fa[R], fc[R];  // w' = fma(fa, f, -fc); kF16: scale and zero
#pragma unroll
    for (int u = 0; u < kSpqrGpuChunkCols / 8; ++u) {
      const int64_t col = j0 + 8 * u;
      if (col >= n) break;  // n % 8 == 0: units are whole
      if (u == 0 || off == beta1) {
        if (u != 0) {
          ++g;
          off = 0;
        }
#pragma unroll
        for (int i = 0; i < R; ++i) {
          const SpqrGpuStats st = SpqrGpuStatsFromRaw<kF16>(l, raw[i], g);
          if constexpr (kF16) {
            fa[i] = st.scale;
            fc[i] = st.zero;
          } else {
            fa[i] = __fmul_rn(st.scale, kScale);
            fc[i] = -__fmul_rn(st.scale, __fadd_rn(kScale, st.zero));
          }
          raw[i] = SpqrGpuLoadStats(l, rows[i], blocks[i], g < last_group ? g + 1 : g);
        }
      }
      off += 8;
      // Inputs of the unit's 8 columns: at B <= 2 all at once (2B 16-byte loads), else per column.
      float xu[B <= 2 ? 8 * B : 1];
      if constexpr (B <= 2) {
#pragma unroll
        for (int v = 0; v < 2 * B; ++v) {
          const float4 t = __ldg(reinterpret_cast<const float4*>(xt + col * B) + v);
          xu[4 * v] = t.x;
          xu[4 * v + 1] = t.y;
          xu[4 * v + 2] = t.z;
          xu[4 * v + 3] = t.w;
        }
      }
#pragma unroll
      for (int k = 0; k < 8; ++k) {
        float xv[B];
        if constexpr (B <= 2) {
#pragma unroll
          for (int b = 0; b < B; ++b) xv[b] = xu[k * B + b];
        } else {
#pragma unroll
          for (int b = 0; b < B; b += 4) {
            const float4 t = __ldg(reinterpret_cast<const float4*>(xt + (col + k) * B + b));
            xv[b] = t.x;
            xv[b + 1] = t.y;
            xv[b + 2] = t.z;
            xv[b + 3] = t.w;
          }
        }
        const int bit = (8 * u + k) * W;
        const int word = bit >> 5, shift = bit & 31;
#pragma unroll
        for (int i = 0; i < R; ++i) {
          uint32_t v;
          if (shift + W > 32) {  // straddles two words (W = 3 only)
            v = ((cw[i][word] >> shift) | (cw[i][word + 1] << (32 - shift))) << kTop;
          } else if (shift <= kTop) {
            v = cw[i][word] << (kTop - shift);
          } else {
            v = cw[i][word] >> (shift - kTop);
          }
          const float f = __uint_as_float(Lop3<0xEA>(v, kMask, 0x3f800000u));  // 1 + q 2^-W
          float w;
          if constexpr (kF16) {
            w = SpqrGpuDequantAs<true>(__fmul_rn(__fsub_rn(f, 1.0f), kScale), fa[i], fc[i]);
          } else {
            w = __fmaf_rn(fa[i], f, fc[i]);
          }
#pragma unroll
          for (int b = 0; b < B; ++b) acc[i][b] = __fmaf_rn(w, xv[b], acc[i][b]);
        }
      }
    }
  }

  // Outliers: residual * x added to the same sums.
#pragma unroll
  for (int i = 0; i < R; ++i) {
    if (row0 + i >= m) continue;
    const int64_t last = __ldg(l.outlier_row_offsets + rows[i] + 1);
    for (int64_t k = __ldg(l.outlier_row_offsets + rows[i]) + lane; k < last; k += 32) {
      int64_t col;
      float v;
      SpqrGpuOutlier(l, k, &col, &v);
      if constexpr (kF16) {  // the weight is h(w + v): add h(w + v) - w
        const SpqrGpuStats st = SpqrGpuGroupStats<true>(l, rows[i], blocks[i], col / beta1);
        const float w = SpqrGpuDequantAs<true>(
            SpqrGpuCodeToFloat(SpqrGpuCodeAt(l, rows[i], col), ~0u), st.scale, st.zero);
        v = __fsub_rn(SpqrGpuRoundF16(__fadd_rn(w, v)), w);
      }
#pragma unroll
      for (int b = 0; b < B; ++b) acc[i][b] = __fmaf_rn(v, __ldg(xt + col * B + b), acc[i][b]);
    }
  }

#pragma unroll
  for (int i = 0; i < R; ++i) {
#pragma unroll
    for (int b = 0; b < B; ++b) {
      float s = acc[i][b];
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
      if (lane == 0 && row0 + i < m && b < batch) y[b * m + row0 + i] = s;
    }
  }
}

__device__ __forceinline__ void SpqrGpuStore(float* out, int64_t i, float v) { out[i] = v; }
__device__ __forceinline__ void SpqrGpuStore(__half* out, int64_t i, float v) {
  out[i] = __float2half_rn(v);
}

// Dense W_hat in PERMUTED column order, out[r * n + j] = w(r, j) (fp32, or rounded to fp16), for
// any wbits and beta1. One thread per 8 consecutive columns of a row: consecutive threads write
// consecutive columns (coalesced). Outliers are added before the single store (the thread finds the
// first outlier of its columns by binary search in the row's sorted CSR records). kF16: the
// "fp16 arithmetic" variant (the only kernel that implements it; its fp16 output is exact).
template <typename OutT, bool kF16 = false>
__global__ void __launch_bounds__(kSpqrGpuDequantizeThreads)
    SpqrGpuDequantizeKernel(SpqrGpuLayerView l, OutT* __restrict__ out) {
  const int64_t n = l.in_features;
  const int64_t units = (n + 7) / 8;
  // Rows along grid.y, 8-column units along x: no division per element.
  for (int64_t r = blockIdx.y; r < l.out_features; r += gridDim.y) {
    const int64_t block = r / l.beta2;
    for (int64_t unit = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; unit < units;
         unit += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      const int64_t j0 = unit * 8;
      const int64_t j1 = j0 + 8 < n ? j0 + 8 : n;
      float w[8];
      int64_t g = j0 / l.beta1;
      int64_t next_group_start = (g + 1) * l.beta1;
      SpqrGpuStats st = SpqrGpuGroupStats<kF16>(l, r, block, g);
      for (int64_t j = j0; j < j1; ++j) {
        if (j == next_group_start) {
          st = SpqrGpuGroupStats<kF16>(l, r, block, ++g);
          next_group_start += l.beta1;
        }
        const uint32_t code = SpqrGpuCodeAt(l, r, j);
        w[j - j0] = SpqrGpuDequantAs<kF16>(SpqrGpuCodeToFloat(code, ~0u), st.scale, st.zero);
      }
      int64_t lo = __ldg(l.outlier_row_offsets + r);
      int64_t hi = __ldg(l.outlier_row_offsets + r + 1);
      const int64_t last = hi;
      while (lo < hi) {  // first outlier with column >= j0
        const int64_t mid = (lo + hi) / 2;
        int64_t col;
        float v;
        SpqrGpuOutlier(l, mid, &col, &v);
        if (col < j0) {
          lo = mid + 1;
        } else {
          hi = mid;
        }
      }
      for (; lo < last; ++lo) {
        int64_t col;
        float v;
        SpqrGpuOutlier(l, lo, &col, &v);
        if (col >= j1) break;
        w[col - j0] = __fadd_rn(w[col - j0], v);
        if constexpr (kF16) w[col - j0] = SpqrGpuRoundF16(w[col - j0]);
      }
      for (int64_t j = j0; j < j1; ++j) SpqrGpuStore(out, r * n + j, w[j - j0]);
    }
  }
}

__device__ __forceinline__ uint32_t SpqrGpuPackHalves(float lo, float hi) {
  return static_cast<uint32_t>(__half_as_ushort(__float2half_rn(lo))) |
         static_cast<uint32_t>(__half_as_ushort(__float2half_rn(hi))) << 16;
}
__device__ __forceinline__ void SpqrGpuStore8(__half* out, const float (&w)[8]) {
  uint4 v;
  v.x = SpqrGpuPackHalves(w[0], w[1]);
  v.y = SpqrGpuPackHalves(w[2], w[3]);
  v.z = SpqrGpuPackHalves(w[4], w[5]);
  v.w = SpqrGpuPackHalves(w[6], w[7]);
  *reinterpret_cast<uint4*>(out) = v;
}
__device__ __forceinline__ void SpqrGpuStore8(float* out, const float (&w)[8]) {
  reinterpret_cast<float4*>(out)[0] = make_float4(w[0], w[1], w[2], w[3]);
  reinterpret_cast<float4*>(out)[1] = make_float4(w[4], w[5], w[6], w[7]);
}

// The dense part of the dequantization for wbits W in 2..4 and beta1 % 8 == 0 (the decode kernel's
// configurations), without outliers: one warp per output row, lane l decodes chunks l, l + 32, ...
// from W coalesced 128-bit loads with compile-time shifts, exactly as the format (lop3 code to
// float, __fsub_rn, __fmul_rn), and stores 8 values per 16-byte store (fp16) or two (fp32).
// SpqrGpuDequantizeOutliersKernel then adds the residuals.
template <int W, typename OutT>
__global__ void __launch_bounds__(kSpqrGpuDequantizeThreads)
    SpqrGpuDequantizeTilesKernel(SpqrGpuLayerView l, OutT* __restrict__ out) {
  const int lane = threadIdx.x & 31;
  const int64_t r =
      static_cast<int64_t>(blockIdx.x) * (kSpqrGpuDequantizeThreads / 32) + threadIdx.x / 32;
  if (r >= l.out_features) return;
  const int64_t n = l.in_features, chunks = l.lane_chunks, block = r / l.beta2;
  const int beta1 = l.beta1;
  const int64_t last_group = l.num_groups - 1;
  constexpr uint32_t kMask = (1u << W) - 1u;
  const uint4* codes = reinterpret_cast<const uint4*>(l.codes);
  for (int64_t c = lane; c < chunks; c += 32) {
    const int64_t tile = c >> 5;
    const int64_t active = chunks - tile * 32 < 32 ? chunks - tile * 32 : 32;
    uint32_t cw[4 * W];
    const uint4* base = codes + (r * chunks + tile * 32) * W + (c & 31);
#pragma unroll
    for (int q = 0; q < W; ++q) {
      const uint4 v = __ldg(base + q * active);
      cw[4 * q + 0] = v.x;
      cw[4 * q + 1] = v.y;
      cw[4 * q + 2] = v.z;
      cw[4 * q + 3] = v.w;
    }
    const int64_t j0 = c * kSpqrGpuChunkCols;
    int64_t g = j0 / beta1;
    int off = static_cast<int>(j0 - g * beta1);
    SpqrGpuRawStats raw = SpqrGpuLoadStats(l, r, block, g);
    SpqrGpuStats st{0.0f, 0.0f};
#pragma unroll
    for (int u = 0; u < kSpqrGpuChunkCols / 8; ++u) {
      const int64_t col = j0 + 8 * u;
      if (col >= n) break;
      if (u == 0 || off == beta1) {
        if (u != 0) {
          ++g;
          off = 0;
        }
        st = SpqrGpuStatsFromRaw(l, raw, g);
        raw = SpqrGpuLoadStats(l, r, block, g < last_group ? g + 1 : g);
      }
      off += 8;
      float w[8];
#pragma unroll
      for (int k = 0; k < 8; ++k) {
        const int bit = (8 * u + k) * W;
        const int word = bit >> 5, shift = bit & 31;
        uint32_t bits = cw[word] >> shift;
        if (shift + W > 32) bits |= cw[word + 1] << (32 - shift);
        w[k] = SpqrGpuDequant(SpqrGpuCodeToFloat(bits, kMask), st.scale, st.zero);
      }
      SpqrGpuStore8(out + r * n + col, w);
    }
  }
}

// Adds the outliers to a dense part written by SpqrGpuDequantizeTilesKernel: for each outlier the
// exact weight is decoded again and w + residual stored (the format's single rounding of the sum).
// One thread per row (rows hold few outliers).
template <typename OutT>
__global__ void __launch_bounds__(kSpqrGpuDequantizeThreads)
    SpqrGpuDequantizeOutliersKernel(SpqrGpuLayerView l, OutT* __restrict__ out) {
  const int64_t n = l.in_features;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; r < l.out_features;
       r += stride) {
    const int64_t last = __ldg(l.outlier_row_offsets + r + 1);
    for (int64_t k = __ldg(l.outlier_row_offsets + r); k < last; ++k) {
      int64_t col;
      float v;
      SpqrGpuOutlier(l, k, &col, &v);
      const SpqrGpuStats st = SpqrGpuGroupStats(l, r, r / l.beta2, col / l.beta1);
      const float w =
          SpqrGpuDequant(SpqrGpuCodeToFloat(SpqrGpuCodeAt(l, r, col), ~0u), st.scale, st.zero);
      SpqrGpuStore(out, r * n + col, __fadd_rn(w, v));
    }
  }
}

}  // namespace spqr::kernels
