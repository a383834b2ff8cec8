#include "engine/backend/cpu/linear.h"

#include <algorithm>

#include "engine/backend/cpu/linear_gemm.h"
#include "engine/backend/cpu/simd.h"
#include "engine/backend/cpu/spqr_linear.h"
#include "engine/backend/cpu/worker_pool.h"

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

// Calls with at most this many tokens (decode) multiply straight from the stored weights; larger
// ones go to the K-blocked GEMM (linear_gemm.h), which measured at least as fast from 5 tokens on.
constexpr int kMaxTokens = 4;

// Decode-sized calls (at most kMaxTokens tokens) skip the scratch: weights are converted in
// registers. The FMA sequence per (row, token) is exactly LinearBlocked's over the zero-padded row
// (the last partial vector is converted into a zero-padded buffer), so both paths give the same
// bits.
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
  ParallelForDynamic(num_threads, groups, [&](int64_t g, int) {
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
  });
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
  if (x.num_tokens == 0) return;
  if (layer.spqr != nullptr) return SpqrLinear(layer, x, y, num_threads);  // packed SpQR layer
  if (x.num_tokens > kMaxTokens) return LinearBlocked(layer, x, y, num_threads);
  switch (layer.weight.dtype) {
    case DType::kF16:
      return DirectLinearForDType<DType::kF16>(layer, x, y, num_threads);
    case DType::kBF16:
      return DirectLinearForDType<DType::kBF16>(layer, x, y, num_threads);
    default:
      return DirectLinearForDType<DType::kF32>(layer, x, y, num_threads);
  }
}

}  // namespace spqr::cpu
