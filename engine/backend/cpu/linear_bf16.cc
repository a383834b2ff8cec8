#include "engine/backend/cpu/linear_bf16.h"

#include <immintrin.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <vector>

#include "engine/backend/cpu/simd.h"
#include "engine/backend/cpu/worker_pool.h"
#include "engine/util/half.h"

namespace spqr::cpu {
namespace {

constexpr int kK = 32;         // bf16 values per 512-bit vector
constexpr int kMaxTokens = 4;  // tokens per micro-tile
// Rows per micro-tile for NT tokens: at most 24 accumulators + weight registers, so nothing spills
// (measured: a 4 x 6 tile spilled accumulators to the stack in every step). One token reads each
// weight once, so memory decides: one row at a time, read front to back with no software
// prefetch, is a single sequential stream per thread, which this CPU's prefetchers serve best
// (2026-12-04, AMD EPYC, 2 threads, 268 MB matrix: 8.1-9.2 ms against 9.5-13.9 ms for 12
// interleaved rows with prefetch, and ~25 % more decode tokens/s on the dense synthetic model;
// spqr-bench-dense-linear --out 65536 --in 2048 --tokens 1 --threads 2 --kernels bf16). The
// row's one FMA chain is not the bound at DRAM speed.
constexpr int kRowsFor[kMaxTokens + 1] = {0, 1, 8, 6, 4};
// Output rows per thread work unit in prefill: its weights (64 rows x in x 2 bytes) stay in L2
// while every token block streams past them.
constexpr int64_t kRowBlock = 64;
// Elements ahead of the current k that are prefetched in each weight row.
constexpr int64_t kPrefetchElems = 512;

int64_t PadK(int64_t in) { return (in + kK - 1) / kK * kK; }

// Activations as bf16 [tokens][PadK(in)], zero-padded (round to nearest even, as VCVTNEPS2BF16).
void ToBf16(const PackedActivations& x, std::vector<uint16_t>* out) {
  const int64_t kp = PadK(x.in_features);
  out->assign(static_cast<size_t>(x.num_tokens * kp), 0);
  for (int64_t t = 0; t < x.num_tokens; ++t) {
    const float* src = x.data.data() + t * x.stride;
    uint16_t* dst = out->data() + t * kp;
    for (int64_t k = 0; k < x.in_features; ++k) dst[k] = F32ToBf16(src[k]);
  }
}

float FlushDenormal(float v) { return std::fabs(v) < FLT_MIN ? std::copysign(0.0f, v) : v; }

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")

// Rows [row0, row0 + MR) x tokens [0, NT) of x (bf16, stride kp) into y.
template <int MR, int NT>
void MicroTile(const uint16_t* w, int64_t in, int64_t row0, const uint16_t* x, int64_t kp, float* y,
               int64_t y_stride) {
  // Every loop over r and t is unrolled so the accumulators stay in registers (an array indexed
  // in a rolled loop lives on the stack).
  __m512 acc[MR][NT];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 16
    for (int t = 0; t < NT; ++t) acc[r][t] = _mm512_setzero_ps();
  for (int64_t k = 0; k < kp; k += kK) {
    const int64_t left = in - k;
    const __mmask32 mask = left >= kK ? ~__mmask32{0} : (__mmask32{1} << left) - 1;
    __m512i wv[MR];
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      // Prefill's first pass over a row block: fetch ahead of the hardware prefetcher (a
      // prefetch past the end of the matrix is harmless). One token: the hardware alone does
      // better (see kRowsFor).
      if constexpr (NT > 1) {
        _mm_prefetch(reinterpret_cast<const char*>(w + (row0 + r) * in + k + kPrefetchElems),
                     _MM_HINT_T0);
      }
      wv[r] = _mm512_maskz_loadu_epi16(mask, w + (row0 + r) * in + k);
    }
#pragma GCC unroll 16
    for (int t = 0; t < NT; ++t) {
      const __m512bh xv = (__m512bh)(_mm512_loadu_si512(x + t * kp + k));
#pragma GCC unroll 16
      for (int r = 0; r < MR; ++r) {
        acc[r][t] = _mm512_dpbf16_ps(acc[r][t], (__m512bh)(wv[r]), xv);
      }
    }
  }
  alignas(64) float lanes[16];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 16
    for (int t = 0; t < NT; ++t) {
      _mm512_store_ps(lanes, acc[r][t]);
      y[t * y_stride + row0 + r] = TreeSum16(lanes);
    }
  }
}

using TileFn = void (*)(const uint16_t*, int64_t, int64_t, const uint16_t*, int64_t, float*,
                        int64_t);
template <int NT>
constexpr TileFn kMain = MicroTile<kRowsFor[NT], NT>;
template <int NT>
constexpr TileFn kOne = MicroTile<1, NT>;
constexpr TileFn kMainTiles[kMaxTokens + 1] = {nullptr, kMain<1>, kMain<2>, kMain<3>, kMain<4>};
constexpr TileFn kOneRow[kMaxTokens + 1] = {nullptr, kOne<1>, kOne<2>, kOne<3>, kOne<4>};

// Rows [r0, r1) for every token.
void Rows(const uint16_t* w, int64_t in, const uint16_t* x, int64_t kp, int64_t num_tokens,
          int64_t r0, int64_t r1, float* y, int64_t y_stride) {
  for (int64_t t0 = 0; t0 < num_tokens; t0 += kMaxTokens) {
    const int nt = static_cast<int>(std::min<int64_t>(kMaxTokens, num_tokens - t0));
    const int mr = kRowsFor[nt];
    const uint16_t* xt = x + t0 * kp;
    float* yt = y + t0 * y_stride;
    int64_t r = r0;
    for (; r + mr <= r1; r += mr) kMainTiles[nt](w, in, r, xt, kp, yt, y_stride);
    for (; r < r1; ++r) kOneRow[nt](w, in, r, xt, kp, yt, y_stride);
  }
}

#pragma GCC pop_options

}  // namespace

bool Bf16DotSupported() {
#if defined(__x86_64__)
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512bf16");
#else
  return false;
#endif
}

void LinearBf16(const LinearTensors& layer, const PackedActivations& x, float* y, int num_threads) {
  const int64_t m = layer.out_features, in = layer.in_features, num_tokens = x.num_tokens;
  if (num_tokens == 0) return;
  thread_local std::vector<uint16_t> xb;
  ToBf16(x, &xb);
  const int64_t kp = PadK(in);
  const uint16_t* w = static_cast<const uint16_t*>(layer.weight.data);
  const uint16_t* xp = xb.data();
  // Decode-sized calls split rows finely (all threads busy on one matrix); prefill splits into
  // L2-sized row blocks. Either way each thread takes one contiguous range (static split).
  const int64_t unit = num_tokens <= 4 ? 16 : kRowBlock;
  const int64_t units = (m + unit - 1) / unit;
  const int threads = static_cast<int>(std::min<int64_t>(num_threads, units));
  ParallelForStatic(threads, units, [&](int64_t u0, int64_t u1) {
    for (int64_t u = u0; u < u1; ++u) {
      Rows(w, in, xp, kp, num_tokens, u * unit, std::min(m, (u + 1) * unit), y, m);
    }
  });
  AddBias(layer, num_tokens, y);
}

void LinearBf16Reference(const LinearTensors& layer, const PackedActivations& x, float* y) {
  const int64_t m = layer.out_features, in = layer.in_features;
  std::vector<uint16_t> xb;
  ToBf16(x, &xb);
  const int64_t kp = PadK(in);
  const uint16_t* w = static_cast<const uint16_t*>(layer.weight.data);
  auto value = [](uint16_t h) { return FlushDenormal(Bf16ToF32(h)); };
  for (int64_t t = 0; t < x.num_tokens; ++t) {
    const uint16_t* xt = xb.data() + t * kp;
    for (int64_t r = 0; r < m; ++r) {
      float lanes[16] = {};
      for (int64_t k = 0; k < kp; k += 2) {
        const int i = static_cast<int>((k % kK) / 2);
        const float w1 = k + 1 < in ? value(w[r * in + k + 1]) : 0.0f;
        const float w0 = k < in ? value(w[r * in + k]) : 0.0f;
        lanes[i] = FlushDenormal(std::fma(w1, value(xt[k + 1]), lanes[i]));
        lanes[i] = FlushDenormal(std::fma(w0, value(xt[k]), lanes[i]));
      }
      y[t * m + r] = TreeSum16(lanes);
    }
  }
  AddBias(layer, x.num_tokens, y);
}

}  // namespace spqr::cpu
