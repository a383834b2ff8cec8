// The fused tensor-core SpQR kernel of LaunchSpqrGpuLinear (path kMma, spqr_gpu_linear.cuh):
// each warp decodes its weights from the GPU layout (spqr_gpu_layout.h) straight into
// mma.m16n8k16 fp16 A fragments in registers, multiplies them with the permuted fp16 inputs
// staged in shared memory (the B fragments) and accumulates in fp32; outliers are added from the
// row's CSR records in the same kernel. Compiled by nvcc for the device and by g++ for the CPU
// harness (launch.cuh, ptx.cuh).
//
// Work split. A block has kSpqrGpuMmaWarps warps; warp w owns the 16 output rows
// [16 (blockIdx.x * warps + w), +16) (an m16 tile) and all 8 NT tokens [blockIdx.y * 8 NT, +8 NT)
// (NT n8 tiles), over the lane chunks [blockIdx.z * chunks_per_split, +chunks_per_split) of the
// row (a K split). The block walks its chunks one at a time: the 8 NT x 128 fp16 inputs of the next
// chunk are copied to shared memory with cp.async (double buffered) while the current one is
// multiplied. gridDim.z == 1 stores y, else each split stores its partial sums into
// out[blockIdx.z][batch][m] and SpqrGpuSplitReduceKernel adds them in split order (deterministic).
//
// The k order. mma sums over k, so any bijection between the 16 k slots of a step and 16 columns
// works if A and B use the same one. Lane (g, t) (g = lane / 4, t = lane % 4) holds A's k slots
// {2t, 2t+1, 2t+8, 2t+9} of rows g and g+8, and B's same slots of token g. We give k step s
// (0..7) of a 128-column chunk, slots {2t, 2t+1, 2t+8, 2t+9}, the chunk's columns
// 32 t + 4 s + {0, 1, 2, 3}. Then lane t's 32 codes of a row are columns [32 t, 32 t + 32): bits
// [32 t W, 32 (t+1) W) of the chunk's stream, i.e. exactly stream words t W .. t W + W - 1 (one
// 16-byte load at W = 4, one 8-byte load at W = 2, three 4-byte loads at W = 3), and its B
// fragment of a step is 4 consecutive fp16 inputs: one 8-byte shared-memory load.
//
// Weight arithmetic per weight: the decode kernel's (spqr_gpu_linear_kernel.cuh): one shift, one
// lop3 giving f = 1 + q 2^-W, one FMA w' = fma(scale 2^W, f, -scale (2^W + zero)), then
// cvt.rn.f16x2.f32 per two weights. So each fp16 weight is the round-to-nearest of w' (within
// e_j = 3 2^-24 |scale| (2^W + |zero|) of the exact decode).
#pragma once

#include <cuda_fp16.h>

#include <cstdint>

#include "engine/backend/cuda/launch.cuh"
#include "engine/backend/cuda/ptx.cuh"
#include "engine/backend/cuda/spqr_gpu_layout.h"
#include "engine/backend/cuda/spqr_gpu_linear_kernel.cuh"

namespace spqr::kernels {

inline constexpr int kSpqrGpuMmaWarps = 8;                        // one m16 tile each
inline constexpr int kSpqrGpuMmaThreads = 32 * kSpqrGpuMmaWarps;  // 256
inline constexpr int kSpqrGpuMmaRowsPerBlock = 16 * kSpqrGpuMmaWarps;
inline constexpr int kSpqrGpuMmaMaxTokenTiles = 8;  // NT <= 8: at most 64 tokens per block
// One token's staged chunk in 8-byte units: 128 fp16 = 32 units, plus one unit of padding. The
// stride of 33 units (66 words, 2 mod 32) spreads a B-fragment load (8 tokens x 4 lane groups x 8
// bytes) over all 32 banks twice: two wavefronts for 256 bytes, the minimum.
inline constexpr int kSpqrGpuMmaStageUnits = kSpqrGpuChunkCols / 4 + 1;

__device__ __forceinline__ uint32_t SpqrGpuPackHalf2(float lo, float hi) {
  const __half2 h = __floats2half2_rn(lo, hi);  // cvt.rn.f16x2.f32; lo in the low half
  return static_cast<uint32_t>(__half_as_ushort(__low2half(h))) |
         static_cast<uint32_t>(__half_as_ushort(__high2half(h))) << 16;
}

// Stream words t W .. t W + W - 1 of chunk c (lane group t's 32 codes); `row` = the row's first
// 16-byte word (row r * lane_chunks * W).
template <int W>
__device__ __forceinline__ void SpqrGpuMmaLoadCodes(const uint4* row, int chunks, int c, int t,
                                                    uint32_t (&cw)[W]) {
  const int tile = c >> 5;
  const int active = chunks - tile * 32 < 32 ? chunks - tile * 32 : 32;
  // 16-byte word q of chunk c is at base + q * active; 32-bit offsets from one 64-bit base.
  const uint32_t* base = reinterpret_cast<const uint32_t*>(row + tile * 32 * W + (c & 31));
  if constexpr (W == 4) {
    const uint4 v = __ldg(reinterpret_cast<const uint4*>(base + 4 * t * active));
    cw[0] = v.x, cw[1] = v.y, cw[2] = v.z, cw[3] = v.w;
  } else if constexpr (W == 2) {
    const uint2 v =
        __ldg(reinterpret_cast<const uint2*>(base + 4 * (t >> 1) * active + 2 * (t & 1)));
#pragma unroll
    for (int i = 0; i < 2; ++i) cw[i] = i == 0 ? v.x : v.y;
  } else {
#pragma unroll
    for (int i = 0; i < W; ++i) {
      const int w32 = t * W + i;
      cw[i] = __ldg(base + 4 * (w32 >> 2) * active + (w32 & 3));
    }
  }
}

// One row's statistics, addressed once per thread (the launch checks n < 2^27, so a group's bit
// offset g * 2 * stats_bits fits 32 bits).
struct SpqrGpuMmaStatsRow {
  const uint32_t* stats;  // the row's statistics words
  const uint2* second;    // the row block's second-level records (bilevel statistics only)
};

// Scale and zero from a bilevel pair (scale code | zero code << sb, higher bits ignored) and its
// second-level record: SpqrGpuStatsFromRaw's values.
__device__ __forceinline__ SpqrGpuStats SpqrGpuMmaStatsFromPair(uint32_t pair, uint2 second,
                                                                int sb) {
  const uint32_t mask = (1u << sb) - 1u;
  return {SpqrGpuDequant(SpqrGpuCodeToFloat(pair, mask), SpqrGpuHalfBits(second.x),
                         SpqrGpuHalfBits(second.x >> 16)),
          SpqrGpuDequant(SpqrGpuCodeToFloat(pair >> sb, mask), SpqrGpuHalfBits(second.y),
                         SpqrGpuHalfBits(second.y >> 16))};
}

// fp32 value 1 + q 2^-W of code k (0..31) of the lane's stream words (compile-time offsets).
template <int W>
__device__ __forceinline__ float SpqrGpuMmaCodeF(const uint32_t (&cw)[W], int k) {
  constexpr int kTop = 23 - W;
  constexpr uint32_t kMask = ((1u << W) - 1u) << kTop;
  const int bit = k * W;
  const int word = bit >> 5, shift = bit & 31;
  uint32_t v;
  if (shift + W > 32) {  // straddles two words (W = 3 only)
    v = ((cw[word] >> shift) | (cw[word + 1] << (32 - shift))) << kTop;
  } else if (shift <= kTop) {
    v = cw[word] << (kTop - shift);
  } else {
    v = cw[word] >> (shift - kTop);
  }
  return __uint_as_float(Lop3<0xEA>(v, kMask, 0x3f800000u));
}

// Fused decode + tensor-core product, for wbits W (2..4), beta1 % 8 == 0 and NT n8 token tiles
// (NT in 1, 2, 4, 8). xh: [batch][n] fp16 inputs in PERMUTED column order (row stride n); x: the
// original fp32 inputs [batch][n] (outliers multiply these, through perm). See the file comment.
template <int W, int NT>
__global__ void __launch_bounds__(kSpqrGpuMmaThreads, 1)
    SpqrGpuMmaKernel(SpqrGpuLayerView l, const __half* __restrict__ xh, const float* __restrict__ x,
                     float* __restrict__ out, int64_t batch, int64_t chunks_per_split) {
  constexpr int T = 8 * NT;  // tokens per block
  constexpr float kScale = static_cast<float>(1 << W);
  SPQR_SHARED_ARRAY(uint2, stage, 2 * T * kSpqrGpuMmaStageUnits);

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g = lane >> 2, t = lane & 3;
  const int64_t m = l.out_features, n = l.in_features;
  const int chunks = static_cast<int>(l.lane_chunks);
  const int beta1 = l.beta1, sb = l.stats_bits;
  const int last_group = static_cast<int>(l.num_groups) - 1;
  const int stat_words = static_cast<int>(l.stat_row_words);
  const int64_t row0 = (static_cast<int64_t>(blockIdx.x) * kSpqrGpuMmaWarps + warp) * 16;
  const int64_t tok0 = static_cast<int64_t>(blockIdx.y) * T;
  const int c_begin = static_cast<int>(blockIdx.z * chunks_per_split);
  const int c_end =
      c_begin + chunks_per_split < chunks ? c_begin + static_cast<int>(chunks_per_split) : chunks;

  // This lane's two rows (g, g + 8 of the warp's tile); rows past m are computed, not stored.
  int64_t rows[2];
  const uint4* code_rows[2];
  SpqrGpuMmaStatsRow stat_rows[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int64_t r = row0 + g + 8 * h;
    rows[h] = r < m ? r : m - 1;
    code_rows[h] = reinterpret_cast<const uint4*>(l.codes) + rows[h] * chunks * W;
    stat_rows[h].stats = l.stats + rows[h] * l.stat_row_words;
    stat_rows[h].second = sb == 16 ? nullptr
                                   : reinterpret_cast<const uint2*>(l.second_level) +
                                         rows[h] / l.beta2 * l.num_groups;
  }

  // This thread's share of staging a chunk's inputs: 8-byte units i * 256 + threadIdx.x of the
  // T x 32 (token, 4-column) units, i.e. tokens 8 i + threadIdx.x / 32 at columns
  // 4 (threadIdx.x % 32) + {0..3}. Tokens past the batch and columns past n are zero.
  static_assert(T * 32 % kSpqrGpuMmaThreads == 0, "whole rounds of 8-byte units");
  constexpr int kUnits = T * 32 / kSpqrGpuMmaThreads;  // = NT
  const int unit_col = 4 * (threadIdx.x & 31);
  const int64_t unit_tok = tok0 + (threadIdx.x >> 5);
  const __half* src = xh + (unit_tok < batch ? unit_tok : 0) * n + unit_col;
  const int dst = static_cast<int>(threadIdx.x >> 5) * kSpqrGpuMmaStageUnits + (threadIdx.x & 31);
  auto stage_chunk = [&](int c, int buf) {
    const int64_t col0 = static_cast<int64_t>(c) * kSpqrGpuChunkCols;
    const bool in_cols = col0 + unit_col < n;
#pragma unroll
    for (int i = 0; i < kUnits; ++i) {
      uint2* to = &stage[(buf * T + 8 * i) * kSpqrGpuMmaStageUnits + dst];
      if (in_cols && unit_tok + 8 * i < batch) {
        CpAsync<8>(to, src + 8 * i * n + col0);
      } else {
        *to = make_uint2(0u, 0u);
      }
    }
  };

  float acc[NT][4];
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[nt][i] = 0.0f;
  }

  // The lane's group and column offset inside it at the chunk's start, advanced per chunk.
  const int q128 = kSpqrGpuChunkCols / beta1, r128 = kSpqrGpuChunkCols % beta1;
  int grp = static_cast<int>((static_cast<int64_t>(c_begin) * kSpqrGpuChunkCols + 32 * t) / beta1);
  int off = static_cast<int>(static_cast<int64_t>(c_begin) * kSpqrGpuChunkCols + 32 * t -
                             static_cast<int64_t>(grp) * beta1);

  int ku[4];
  auto unit_groups = [&](int offset) {
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      const int d = offset + 8 * u;
      ku[u] = (d >= beta1 ? 1 : 0) + (d >= 2 * beta1 ? 1 : 0) + (d >= 3 * beta1 ? 1 : 0);
    }
  };

  unit_groups(off);

  if (c_begin < c_end) stage_chunk(c_begin, 0);
  CpAsyncCommit();
  for (int c = c_begin; c < c_end; ++c) {
    const int buf = (c - c_begin) & 1;
    if (c + 1 < c_end) stage_chunk(c + 1, buf ^ 1);
    CpAsyncCommit();

    // Codes and the raw statistics of this chunk's groups, loaded before the wait.
    uint32_t cw[2][W];
#pragma unroll
    for (int h = 0; h < 2; ++h) SpqrGpuMmaLoadCodes<W>(code_rows[h], chunks, c, t, cw[h]);
    // Unit u (8 columns) lies in group grp + k_u (k_u <= 3 since off < beta1 and beta1 >= 8);
    // columns past n use the last group (their inputs are zero). When beta1 divides 128 (8, 16,
    // 32, 64) `off` and so k_u are the same for every chunk: computed once.
    if (r128 != 0) unit_groups(off);
    int ug[4];
    bool fresh[4];
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      ug[u] = grp + ku[u] < last_group ? grp + ku[u] : last_group;
      fresh[u] = u == 0 || ug[u] != ug[u - 1];
    }
    // Bilevel statistics: the pairs of the lane's (at most 4, consecutive) groups lie in one
    // window of 3 words from the first group's word (clamped to the row: the words past its
    // pairs are never used); one 8-byte second-level load per group. fp16: one word per group.
    uint32_t win[2][3] = {};
    uint32_t first[2][4] = {};
    uint2 second[2][4] = {};
    const int bit0 = ug[0] * 2 * sb;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      if (sb == 16) {
#pragma unroll
        for (int u = 0; u < 4; ++u) {
          if (fresh[u]) first[h][u] = __ldg(stat_rows[h].stats + ug[u]);
        }
      } else {
        const int w0 = bit0 >> 5;
#pragma unroll
        for (int i = 0; i < 3; ++i) {
          win[h][i] = __ldg(stat_rows[h].stats + (w0 + i < stat_words ? w0 + i : stat_words - 1));
        }
#pragma unroll
        for (int u = 0; u < 4; ++u) {
          if (fresh[u]) second[h][u] = __ldg(stat_rows[h].second + ug[u]);
        }
      }
    }
    grp += q128;
    off += r128;
    if (off >= beta1) {
      off -= beta1;
      ++grp;
    }

    CpAsyncWait<1>();  // chunk c's inputs (the group before the newest) have landed
    __syncthreads();
    const uint2* xs = &stage[buf * T * kSpqrGpuMmaStageUnits];

    float fa[2] = {0.0f, 0.0f}, fc[2] = {0.0f, 0.0f};  // w' = fma(fa, f, fc) for rows g, g + 8
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      if (fresh[u]) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          SpqrGpuStats st;
          if (sb == 16) {
            st = {SpqrGpuHalfBits(first[h][u]), SpqrGpuHalfBits(first[h][u] >> 16)};
          } else {
            // Pair of group ug[u]: window bits [shift, shift + 2 sb), shift < 31 + 3 * 16.
            const int shift = (bit0 & 31) + (ug[u] - ug[0]) * 2 * sb;
            const uint64_t lo = win[h][0] | static_cast<uint64_t>(win[h][1]) << 32;
            const uint64_t hi = win[h][1] | static_cast<uint64_t>(win[h][2]) << 32;
            const uint32_t pair =
                static_cast<uint32_t>(shift < 32 ? lo >> shift : hi >> (shift - 32));
            st = SpqrGpuMmaStatsFromPair(pair, second[h][u], sb);
          }
          fa[h] = __fmul_rn(st.scale, kScale);
          fc[h] = -__fmul_rn(st.scale, __fadd_rn(kScale, st.zero));
        }
      }
#pragma unroll
      for (int half = 0; half < 2; ++half) {  // k step s = 2 u + half: codes 4 s .. 4 s + 3
        const int s = 2 * u + half;
        uint32_t a[4];
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          float w[4];
#pragma unroll
          for (int k = 0; k < 4; ++k) {
            w[k] = __fmaf_rn(fa[h], SpqrGpuMmaCodeF<W>(cw[h], 4 * s + k), fc[h]);
          }
          a[h] = SpqrGpuPackHalf2(w[0], w[1]);      // k slots 2t, 2t+1 of row g (+8)
          a[h + 2] = SpqrGpuPackHalf2(w[2], w[3]);  // k slots 2t+8, 2t+9
        }
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
          const uint2 xb = xs[(8 * nt + g) * kSpqrGpuMmaStageUnits + 8 * t + s];
          const uint32_t b[2] = {xb.x, xb.y};
          MmaM16N8K16F16F32(acc[nt], a, b, acc[nt]);
        }
      }
    }
    __syncthreads();  // every warp is done with `buf` before the next iteration refills it
  }
  CpAsyncWait<0>();

  // Outliers of this split's columns: lane (g, t) adds them to its sums of rows g, g + 8 and
  // tokens 8 nt + 2 t + {0, 1}; the four lanes of a row read the same records.
  const int64_t k0 = static_cast<int64_t>(c_begin) * kSpqrGpuChunkCols;
  const int64_t k1 = static_cast<int64_t>(c_end) * kSpqrGpuChunkCols;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    if (row0 + g + 8 * h >= m) continue;
    int64_t lo = __ldg(l.outlier_row_offsets + rows[h]);
    int64_t hi = __ldg(l.outlier_row_offsets + rows[h] + 1);
    const int64_t last = hi;
    if (k0 > 0) {
      while (lo < hi) {  // first record with column >= k0
        const int64_t mid = (lo + hi) / 2;
        int64_t col;
        float v;
        SpqrGpuOutlier(l, mid, &col, &v);
        if (col < k0) {
          lo = mid + 1;
        } else {
          hi = mid;
        }
      }
    }
    for (int64_t k = lo; k < last; ++k) {
      int64_t col;
      float v;
      SpqrGpuOutlier(l, k, &col, &v);
      if (col >= k1) break;
      const int64_t src = __ldg(l.perm + col);
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int64_t tk = tok0 + 8 * nt + 2 * t + e;
          if (tk < batch) {
            acc[nt][2 * h + e] = __fmaf_rn(v, __ldg(x + tk * n + src), acc[nt][2 * h + e]);
          }
        }
      }
    }
  }

  float* result = out + static_cast<int64_t>(blockIdx.z) * batch * m;
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int64_t r = row0 + g + 8 * (i >> 1);
      const int64_t tk = tok0 + 8 * nt + 2 * t + (i & 1);
      if (r < m && tk < batch) result[tk * m + r] = acc[nt][i];
    }
  }
}

// y[i] = sum over s < splits of part[s * count + i], in split order (count = batch * m).
__global__ void SpqrGpuSplitReduceKernel(const float* __restrict__ part, float* __restrict__ y,
                                         int64_t count, int splits) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += stride) {
    float s = part[i];
    for (int k = 1; k < splits; ++k) s += part[k * count + i];
    y[i] = s;
  }
}

}  // namespace spqr::kernels
