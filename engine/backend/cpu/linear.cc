#include "engine/backend/cpu/linear.h"

#include <algorithm>

#include "engine/backend/cpu/simd.h"

namespace spqr::cpu {

void PackActivations(const float* x, int64_t num_tokens, int64_t in_features,
                     PackedActivations* out) {
  out->num_tokens = num_tokens;
  out->in_features = in_features;
  out->stride = PadToLanes(in_features);
  out->data.assign(num_tokens * out->stride, 0.0f);
  for (int64_t t = 0; t < num_tokens; ++t) {
    std::copy(x + t * in_features, x + (t + 1) * in_features, out->data.data() + t * out->stride);
  }
}

namespace {

// Rows per micro-tile and tokens per micro-tile: 4x4 accumulators stay in registers.
constexpr int kMaxRows = 4;
constexpr int kMaxTokens = 4;
// Weight rows converted into the scratch at once: 32 rows of a few thousand floats stay in L2
// while every token of the step streams past them.
constexpr int64_t kRowTile = 32;

// sums[t * MR + r] = dot(w row r, x row t) over `kp` (a multiple of the vector width).
template <int MR, int NT>
void DotTile(const float* w, int64_t w_stride, const float* x, int64_t x_stride, int64_t kp,
             float* sums) {
  VecF acc[MR][NT];
  for (int r = 0; r < MR; ++r)
    for (int t = 0; t < NT; ++t) acc[r][t] = VZero();
  for (int64_t k = 0; k < kp; k += kLanes) {
    VecF wv[MR];
    for (int r = 0; r < MR; ++r) wv[r] = VLoad(w + r * w_stride + k);
    for (int t = 0; t < NT; ++t) {
      const VecF xv = VLoad(x + t * x_stride + k);
      for (int r = 0; r < MR; ++r) acc[r][t] = VFma(wv[r], xv, acc[r][t]);
    }
  }
  for (int t = 0; t < NT; ++t)
    for (int r = 0; r < MR; ++r) sums[t * MR + r] = VReduceAdd(acc[r][t]);
}

using DotTileFn = void (*)(const float*, int64_t, const float*, int64_t, int64_t, float*);

template <int MR>
constexpr DotTileFn kTilesForRows[kMaxTokens] = {DotTile<MR, 1>, DotTile<MR, 2>, DotTile<MR, 3>,
                                                 DotTile<MR, 4>};
constexpr const DotTileFn* kTiles[kMaxRows] = {kTilesForRows<1>, kTilesForRows<2>, kTilesForRows<3>,
                                               kTilesForRows<4>};

}  // namespace

void Linear(const LinearTensors& layer, const PackedActivations& x, float* y, int num_threads) {
  const int64_t out_features = layer.out_features;
  const int64_t in_features = layer.in_features;
  const int64_t kp = x.stride;
  const int64_t num_tokens = x.num_tokens;
  const int64_t num_tiles = (out_features + kRowTile - 1) / kRowTile;
  const TensorView& weight = layer.weight;

#pragma omp parallel num_threads(num_threads)
  {
    // Reused across calls: converting a tile is cheap, reallocating it every call is not.
    thread_local std::vector<float> scratch;
    if (scratch.size() < static_cast<size_t>(kRowTile * kp)) scratch.resize(kRowTile * kp);
    float sums[kMaxRows * kMaxTokens];
    float bias[kRowTile];
#pragma omp for schedule(static)
    for (int64_t tile = 0; tile < num_tiles; ++tile) {
      const int64_t row0 = tile * kRowTile;
      const int64_t rows = std::min(kRowTile, out_features - row0);
      for (int64_t r = 0; r < rows; ++r) {
        ConvertToF32(weight.dtype, weight.data, (row0 + r) * in_features, in_features,
                     scratch.data() + r * kp);
        std::fill(scratch.data() + r * kp + in_features, scratch.data() + (r + 1) * kp, 0.0f);
      }
      if (layer.bias) {
        ConvertToF32(layer.bias->dtype, layer.bias->data, row0, rows, bias);
      } else {
        std::fill(bias, bias + rows, 0.0f);
      }
      for (int64_t t0 = 0; t0 < num_tokens; t0 += kMaxTokens) {
        const int nt = static_cast<int>(std::min<int64_t>(kMaxTokens, num_tokens - t0));
        const float* xt = x.data.data() + t0 * kp;
        for (int64_t r0 = 0; r0 < rows; r0 += kMaxRows) {
          const int mr = static_cast<int>(std::min<int64_t>(kMaxRows, rows - r0));
          kTiles[mr - 1][nt - 1](scratch.data() + r0 * kp, kp, xt, kp, kp, sums);
          for (int t = 0; t < nt; ++t) {
            float* yt = y + (t0 + t) * out_features + row0 + r0;
            for (int r = 0; r < mr; ++r) yt[r] = sums[t * mr + r] + bias[r0 + r];
          }
        }
      }
    }
  }
}

}  // namespace spqr::cpu
