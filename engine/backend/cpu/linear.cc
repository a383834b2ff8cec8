#include "engine/backend/cpu/linear.h"

#include <algorithm>

#include "engine/backend/cpu/simd.h"
#include "engine/backend/cpu/spqr_linear.h"

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

void AddBias(const LinearTensors& layer, int64_t num_tokens, float* y) {
  if (!layer.bias) return;
  const int64_t m = layer.out_features;
  std::vector<float> bias(static_cast<size_t>(m));
  ConvertToF32(layer.bias->dtype, layer.bias->data, 0, m, bias.data());
  for (int64_t t = 0; t < num_tokens; ++t) {
    for (int64_t r = 0; r < m; ++r) y[t * m + r] += bias[r];
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

// Decode-sized calls (at most kMaxTokens tokens) skip the scratch: weights are converted in
// registers. The FMA sequence per (row, token) is exactly DotTile's over the zero-padded row (the
// last partial vector is converted into a zero-padded buffer), so both paths give the same bits.
template <DType D, int MR, int NT>
void DirectDotTile(const void* w, int64_t row0, int64_t in, const float* x, int64_t x_stride,
                   float* sums) {
  VecF acc[MR][NT];
  for (int r = 0; r < MR; ++r)
    for (int t = 0; t < NT; ++t) acc[r][t] = VZero();
  const int64_t full = in / kLanes * kLanes;
  for (int64_t k = 0; k < full; k += kLanes) {
    VecF wv[MR];
    for (int r = 0; r < MR; ++r) wv[r] = VLoadConverted<D>(w, (row0 + r) * in + k);
    for (int t = 0; t < NT; ++t) {
      const VecF xv = VLoad(x + t * x_stride + k);
      for (int r = 0; r < MR; ++r) acc[r][t] = VFma(wv[r], xv, acc[r][t]);
    }
  }
  if (full < in) {
    for (int r = 0; r < MR; ++r) {
      float tmp[kLanes] = {};
      ConvertToF32(D, w, (row0 + r) * in + full, in - full, tmp);
      const VecF wv = VLoad(tmp);
      for (int t = 0; t < NT; ++t) acc[r][t] = VFma(wv, VLoad(x + t * x_stride + full), acc[r][t]);
    }
  }
  for (int t = 0; t < NT; ++t)
    for (int r = 0; r < MR; ++r) sums[t * MR + r] = VReduceAdd(acc[r][t]);
}

// Rows per direct tile: 8 independent accumulator chains hide the FMA latency at one token.
template <int NT>
constexpr int kDirectRows = NT <= 2 ? 8 : 4;
// Rows per thread work item in the direct path.
constexpr int64_t kDirectRowGroup = 64;

template <DType D, int NT>
void DirectLinear(const LinearTensors& layer, const PackedActivations& x, float* y,
                  int num_threads) {
  constexpr int MR = kDirectRows<NT>;
  const int64_t out = layer.out_features;
  const int64_t in = layer.in_features;
  const void* w = layer.weight.data;
  const int64_t groups = (out + kDirectRowGroup - 1) / kDirectRowGroup;
#pragma omp parallel for num_threads(num_threads) schedule(dynamic, 1)
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t end = std::min(out, (g + 1) * kDirectRowGroup);
    float sums[MR * NT];
    float bias[MR];
    for (int64_t row0 = g * kDirectRowGroup; row0 < end; row0 += MR) {
      const int mr = static_cast<int>(std::min<int64_t>(MR, end - row0));
      if (mr == MR) {
        DirectDotTile<D, MR, NT>(w, row0, in, x.data.data(), x.stride, sums);
      } else {  // remainder rows one at a time; per-row arithmetic is the same
        float one[NT];
        for (int r = 0; r < mr; ++r) {
          DirectDotTile<D, 1, NT>(w, row0 + r, in, x.data.data(), x.stride, one);
          for (int t = 0; t < NT; ++t) sums[t * mr + r] = one[t];
        }
      }
      if (layer.bias) {
        ConvertToF32(layer.bias->dtype, layer.bias->data, row0, mr, bias);
      } else {
        std::fill(bias, bias + mr, 0.0f);
      }
      for (int t = 0; t < NT; ++t)
        for (int r = 0; r < mr; ++r) y[t * out + row0 + r] = sums[t * mr + r] + bias[r];
    }
  }
}

template <DType D>
void DirectLinearForDType(const LinearTensors& layer, const PackedActivations& x, float* y,
                          int num_threads) {
  switch (x.num_tokens) {
    case 1:
      return DirectLinear<D, 1>(layer, x, y, num_threads);
    case 2:
      return DirectLinear<D, 2>(layer, x, y, num_threads);
    case 3:
      return DirectLinear<D, 3>(layer, x, y, num_threads);
    default:
      return DirectLinear<D, 4>(layer, x, y, num_threads);
  }
}

}  // namespace

void Linear(const LinearTensors& layer, const PackedActivations& x, float* y, int num_threads) {
  const int64_t out_features = layer.out_features;
  const int64_t in_features = layer.in_features;
  const int64_t kp = x.stride;
  const int64_t num_tokens = x.num_tokens;
  const int64_t num_tiles = (out_features + kRowTile - 1) / kRowTile;
  const TensorView& weight = layer.weight;
  if (num_tokens == 0) return;
  if (layer.spqr != nullptr) return SpqrLinear(layer, x, y, num_threads);  // packed SpQR layer
  if (num_tokens <= kMaxTokens) {
    switch (weight.dtype) {
      case DType::kF16:
        return DirectLinearForDType<DType::kF16>(layer, x, y, num_threads);
      case DType::kBF16:
        return DirectLinearForDType<DType::kBF16>(layer, x, y, num_threads);
      default:
        return DirectLinearForDType<DType::kF32>(layer, x, y, num_threads);
    }
  }

#pragma omp parallel num_threads(num_threads)
  {
    // Reused across calls: converting a tile is cheap, reallocating it every call is not.
    thread_local std::vector<float> scratch;
    if (scratch.size() < static_cast<size_t>(kRowTile * kp)) scratch.resize(kRowTile * kp);
    float sums[kMaxRows * kMaxTokens];
    float bias[kRowTile];
#pragma omp for schedule(dynamic, 1)
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
