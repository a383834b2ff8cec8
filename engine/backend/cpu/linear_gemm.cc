#include "engine/backend/cpu/linear_gemm.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <utility>
#include <vector>

#include "engine/backend/cpu/simd.h"
#include "engine/backend/cpu/worker_pool.h"

namespace spqr::cpu {
namespace {

// Register tile: kMr rows x kNt tokens of accumulators plus kNt activation vectors and one weight
// vector (31 of AVX-512's 32 registers; 13 of AVX2's 16 with the narrower tile).
#if defined(__AVX512F__)
constexpr int kMr = 4;
constexpr int kNt = 6;
#else
constexpr int kMr = 2;
constexpr int kNt = 4;
#endif
// Blocking, in elements of the padded input width and in rows/tokens. A thread unit is kRowBlock
// output rows x all tokens. Per (token block, K-block) the unit's weights are converted into an
// fp32 panel [kRowBlock][kKBlock] (256 KB, L2); kSubRows rows of it (32 KB) and kNt tokens of
// activations (12 KB) stay in L1 while the micro-tiles sweep them; the paused accumulators of the
// unit's token block, [kRowBlock][kTokenBlock][kLanes] (512 KB), live in L2.
constexpr int64_t kKBlock = 512;
constexpr int64_t kRowBlock = 128;
constexpr int64_t kSubRows = 16;
constexpr int64_t kTokenBlock = 64;

// One micro-tile over [k0, k0 + klen) of the K range: accumulators start at zero (first K-block)
// or are reloaded from `acc`; after the last K-block they are reduced into y (+ bias), otherwise
// stored back to `acc`.
template <int MR, int NT>
void MicroTile(const float* w, int64_t w_stride, const float* x, int64_t x_stride, int64_t klen,
               float* acc, int64_t acc_row_stride, bool first, bool last, float* y,
               int64_t y_stride, const float* bias) {
  VecF a[MR][NT];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 8
    for (int t = 0; t < NT; ++t)
      a[r][t] = first ? VZero() : VLoad(acc + r * acc_row_stride + t * kLanes);
  for (int64_t k = 0; k < klen; k += kLanes) {
    VecF xv[NT];
#pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) xv[t] = VLoad(x + t * x_stride + k);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const VecF wv = VLoad(w + r * w_stride + k);
#pragma GCC unroll 8
      for (int t = 0; t < NT; ++t) a[r][t] = VFma(wv, xv[t], a[r][t]);
    }
  }
  if (last) {
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 8
      for (int t = 0; t < NT; ++t) y[t * y_stride + r] = VReduceAdd(a[r][t]) + bias[r];
  } else {
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 8
      for (int t = 0; t < NT; ++t) VStore(acc + r * acc_row_stride + t * kLanes, a[r][t]);
  }
}

using TileFn = void (*)(const float*, int64_t, const float*, int64_t, int64_t, float*, int64_t,
                        bool, bool, float*, int64_t, const float*);

template <int MR, int... NT>
constexpr std::array<TileFn, sizeof...(NT)> TilesForRows(std::integer_sequence<int, NT...>) {
  return {MicroTile<MR, NT + 1>...};
}
template <int... MR>
constexpr std::array<std::array<TileFn, kNt>, sizeof...(MR)> AllTiles(
    std::integer_sequence<int, MR...>) {
  return {TilesForRows<MR + 1>(std::make_integer_sequence<int, kNt>{})...};
}
// kTiles[mr - 1][nt - 1]: the micro-tile for mr rows x nt tokens.
constexpr auto kTiles = AllTiles(std::make_integer_sequence<int, kMr>{});

struct Scratch {
  std::vector<float> panel;  // [kRowBlock][kKBlock] weights as fp32
  std::vector<float> acc;    // [kRowBlock][kTokenBlock][kLanes] paused accumulators
};

// Output rows [row0, row0 + rows) for every token.
void RowBlock(const LinearTensors& layer, const PackedActivations& x, int64_t row0, int64_t rows,
              float* y, Scratch* s) {
  const int64_t out = layer.out_features, in = layer.in_features, kp = x.stride;
  const TensorView& weight = layer.weight;
  float bias[kRowBlock];
  if (layer.bias) {
    ConvertToF32(layer.bias->dtype, layer.bias->data, row0, rows, bias);
  } else {
    std::fill(bias, bias + rows, 0.0f);
  }
  const int64_t acc_row_stride = kTokenBlock * kLanes;
  for (int64_t tb = 0; tb < x.num_tokens; tb += kTokenBlock) {
    const int64_t tokens = std::min(kTokenBlock, x.num_tokens - tb);
    for (int64_t kb = 0; kb < kp; kb += kKBlock) {
      const int64_t klen = std::min(kKBlock, kp - kb);
      const int64_t valid = std::clamp<int64_t>(in - kb, 0, klen);
      const bool first = kb == 0, last = kb + klen == kp;
      for (int64_t r = 0; r < rows; ++r) {
        float* p = s->panel.data() + r * kKBlock;
        ConvertToF32(weight.dtype, weight.data, (row0 + r) * in + kb, valid, p);
        std::fill(p + valid, p + klen, 0.0f);
      }
      for (int64_t r1 = 0; r1 < rows; r1 += kSubRows) {
        const int64_t r1_end = std::min(rows, r1 + kSubRows);
        for (int64_t t0 = 0; t0 < tokens; t0 += kNt) {
          const int nt = static_cast<int>(std::min<int64_t>(kNt, tokens - t0));
          const float* xt = x.data.data() + (tb + t0) * kp + kb;
          float* yt = y + (tb + t0) * out + row0;
          for (int64_t r0 = r1; r0 < r1_end; r0 += kMr) {
            const int mr = static_cast<int>(std::min<int64_t>(kMr, r1_end - r0));
            kTiles[mr - 1][nt - 1](s->panel.data() + r0 * kKBlock, kKBlock, xt, kp, klen,
                                   s->acc.data() + r0 * acc_row_stride + t0 * kLanes,
                                   acc_row_stride, first, last, yt + r0, out, bias + r0);
          }
        }
      }
    }
  }
}

}  // namespace

void LinearBlocked(const LinearTensors& layer, const PackedActivations& x, float* y,
                   int num_threads) {
  const int64_t out = layer.out_features;
  if (x.num_tokens == 0 || out == 0) return;
  const int64_t units = (out + kRowBlock - 1) / kRowBlock;
  const int threads = static_cast<int>(std::min<int64_t>(std::max(num_threads, 1), units));
  std::atomic<int64_t> next{0};
  ParallelRun(threads, [&](int, int) {
    // Reused across calls: allocating 768 KB per call would cost more than small calls compute.
    thread_local Scratch scratch;
    scratch.panel.resize(kRowBlock * kKBlock);
    scratch.acc.resize(kRowBlock * kTokenBlock * kLanes);
    for (int64_t u = next.fetch_add(1, std::memory_order_relaxed); u < units;
         u = next.fetch_add(1, std::memory_order_relaxed)) {
      const int64_t row0 = u * kRowBlock;
      RowBlock(layer, x, row0, std::min(kRowBlock, out - row0), y, &scratch);
    }
  });
}

void LinearExactReference(const LinearTensors& layer, const PackedActivations& x, float* y) {
  const int64_t out = layer.out_features, in = layer.in_features, kp = x.stride;
  std::vector<float> w(static_cast<size_t>(kp)), bias(static_cast<size_t>(out), 0.0f);
  if (layer.bias) ConvertToF32(layer.bias->dtype, layer.bias->data, 0, out, bias.data());
  for (int64_t o = 0; o < out; ++o) {
    std::fill(w.begin(), w.end(), 0.0f);
    ConvertToF32(layer.weight.dtype, layer.weight.data, o * in, in, w.data());
    for (int64_t t = 0; t < x.num_tokens; ++t) {
      const float* xt = x.data.data() + t * kp;
      float lanes[kLanes] = {};
      for (int64_t k = 0; k < kp; k += kLanes) {
        for (int i = 0; i < kLanes; ++i) lanes[i] = std::fma(w[k + i], xt[k + i], lanes[i]);
      }
      // VReduceAdd's order: lane i += lane i + n/2, halving n down to one lane.
      for (int n = kLanes / 2; n >= 1; n /= 2) {
        for (int i = 0; i < n; ++i) lanes[i] += lanes[i + n];
      }
      y[t * out + o] = lanes[0] + bias[o];
    }
  }
}

}  // namespace spqr::cpu
