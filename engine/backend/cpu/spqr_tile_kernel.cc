#include "engine/backend/cpu/spqr_tile_kernel.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "engine/util/half.h"

namespace spqr::cpu {

void PrepareInt8Activations(int64_t tokens, int64_t n, int unit_cols, Int8Activations* out) {
  const int64_t units = n / unit_cols;
  out->tokens = tokens;
  out->n = n;
  out->units = units;
  out->unit_cols = unit_cols;
  out->q.resize(static_cast<size_t>(tokens * n));
  out->scale.resize(static_cast<size_t>(tokens * units));
  out->sum.resize(static_cast<size_t>(tokens * units));
  constexpr int kBlock = Int8Activations::kTokenBlock;
  if (tokens >= Int8Activations::kMinVectorTokens) {
    const int64_t blocks = (tokens + kBlock - 1) / kBlock;
    // Every element is written by the tokens' quantization (padding tokens zeroed there), so a
    // resize is enough.
    out->x_blocks.resize(static_cast<size_t>(blocks * n * kBlock));
  } else {
    out->x_blocks.clear();
  }
}

namespace internal {

void QuantizeUnitScalar(const float* x, int unit_cols, int8_t* q, float* scale, float* sum) {
  float amax = 0.0f;
  for (int k = 0; k < unit_cols; ++k) amax = std::max(amax, std::fabs(x[k]));  // skips NaN
  float d = 0.0f, s = 0.0f;
  if (amax > 0.0f && std::isfinite(amax)) {
    const float inv = 127.0f / amax;
    d = amax / 127.0f;
    int32_t isum = 0;
    for (int k = 0; k < unit_cols; ++k) {
      // |x * inv| <= 127 up to rounding, so the clamp only guards the last ulp (and maps NaN to
      // -127: std::max(-127, NaN) is -127).
      const float v = std::min(127.0f, std::max(-127.0f, std::nearbyint(x[k] * inv)));
      q[k] = static_cast<int8_t>(v);
      isum += q[k];
    }
    s = d * static_cast<float>(isum);
  } else {
    // All zero (or an infinite input, which the dense sum then carries through d = inf).
    std::fill(q, q + unit_cols, int8_t{0});
    if (!std::isfinite(amax)) d = s = amax;
  }
  *scale = d;
  *sum = s;
}

}  // namespace internal

void QuantizeActivationTokens(const float* x_perm, int64_t t0, int64_t t1, Int8Activations* out,
                              TileIsa isa) {
  const int64_t n = out->n, units = out->units;
  const int unit_cols = out->unit_cols;
  for (int64_t t = t0; t < t1; ++t) {
    const float* x = x_perm + t * n;
    int8_t* q = out->q.data() + t * n;
    float* scale = out->scale.data() + t * units;
    float* sum = out->sum.data() + t * units;
    if (isa == TileIsa::kAvx512Vnni) {
      internal::QuantizeTokenAvx512(x, n, unit_cols, q, scale, sum);
    } else {
      for (int64_t u = 0; u < units; ++u) {
        internal::QuantizeUnitScalar(x + u * unit_cols, unit_cols, q + u * unit_cols, scale + u,
                                     sum + u);
      }
    }
  }
  constexpr int kBlock = Int8Activations::kTokenBlock;
  if (out->tokens >= Int8Activations::kMinVectorTokens) {
    // The blocks these tokens fill, padding tokens (past the last) zeroed.
    const int64_t last = t1 == out->tokens ? (t1 + kBlock - 1) / kBlock * kBlock : t1;
    for (int64_t t = t0; t < last; ++t) {
      float* dst = out->x_blocks.data() + (t / kBlock) * n * kBlock + t % kBlock;
      if (t >= out->tokens) {
        for (int64_t j = 0; j < n; ++j) dst[j * kBlock] = 0.0f;
        continue;
      }
      const float* src = x_perm + t * n;
      for (int64_t j = 0; j < n; ++j) dst[j * kBlock] = src[j];
    }
  }
}

void QuantizeActivations(const float* x_perm, int64_t tokens, int64_t n, int unit_cols,
                         Int8Activations* out, TileIsa isa) {
  PrepareInt8Activations(tokens, n, unit_cols, out);
  QuantizeActivationTokens(x_perm, 0, tokens, out, isa);
}

const char* TileIsaName(TileIsa isa) {
  return isa == TileIsa::kAvx512Vnni ? "avx512-vnni" : "scalar";
}

bool TileIsaSupported(TileIsa isa) {
  if (isa == TileIsa::kScalar) return true;
#if defined(__x86_64__)
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni") &&
         __builtin_cpu_supports("avx512vbmi") && __builtin_cpu_supports("avx512vbmi2") &&
         __builtin_cpu_supports("f16c") && __builtin_cpu_supports("popcnt");
#else
  return false;
#endif
}

TileIsa BestTileIsa() {
  static const TileIsa best =
      TileIsaSupported(TileIsa::kAvx512Vnni) ? TileIsa::kAvx512Vnni : TileIsa::kScalar;
  return best;
}

namespace internal {

void FinishRows(const SpqrTileLayout& l, int64_t tile, const float* dense, int num_tokens,
                const float* x_perm, float* y, int64_t y_stride) {
  const int64_t n = l.in_features;
  const int64_t r0 = tile * kTileRows;
  const int rows = static_cast<int>(std::min<int64_t>(kTileRows, l.out_features - r0));
  for (int t = 0; t < num_tokens; ++t) {
    float acc[kTileRows];
    std::memcpy(acc, dense + t * kTileRows, sizeof(acc));
    uint32_t e = l.outlier_tile_entries[tile];
    for (uint32_t s = l.outlier_tile_steps[tile]; s < l.outlier_tile_steps[tile + 1]; ++s) {
      const uint32_t mask = l.outlier_step_masks[s];
      for (int i = 0; i < kTileRows; ++i) {
        if (((mask >> i) & 1u) == 0) continue;
        acc[i] = std::fma(F16ToF32(l.outlier_values[e]), x_perm[t * n + l.outlier_col(e)], acc[i]);
        ++e;
      }
    }
    for (int i = 0; i < rows; ++i) y[t * y_stride + r0 + i] = acc[i];
  }
}

}  // namespace internal

namespace {

// Scale and zero of the 16 rows of (row tile, group), decoded as the format does.
void TileGroupStats(const SpqrTileLayout& l, int64_t tile, int64_t g, float* s, float* z) {
  for (int i = 0; i < kTileRows; ++i) {
    const int64_t r = tile * kTileRows + i;
    if (r < l.out_features) {
      const GroupStats st = TileLayoutStats(l, r, g);
      s[i] = st.scale;
      z[i] = st.zero;
    } else {
      s[i] = z[i] = 0.0f;  // padding rows: dropped by FinishRows
    }
  }
}

// The reference implementation: the documented arithmetic, one row and token at a time.
void MatmulScalar(const SpqrTileLayout& l, const Int8Activations& xq, const float* x_perm,
                  int64_t tile_begin, int64_t tile_end, float* y, int64_t y_stride) {
  const int e = l.unit_cols;
  const int64_t units = l.units();
  std::vector<uint8_t> codes(static_cast<size_t>(kTileRows * l.in_features));
  for (int64_t tile = tile_begin; tile < tile_end; ++tile) {
    for (int i = 0; i < kTileRows; ++i) {
      const int64_t r = tile * kTileRows + i;
      for (int64_t j = 0; j < l.in_features; ++j) {
        codes[i * l.in_features + j] =
            r < l.out_features ? static_cast<uint8_t>(TileLayoutCode(l, r, j)) : 0;
      }
    }
    for (int64_t t = 0; t < xq.tokens; ++t) {
      float acc[kTileRows] = {};
      float s[kTileRows], z[kTileRows];
      int64_t cur_g = -1;
      for (int64_t u = 0; u < units; ++u) {
        const int64_t g = u * e / l.beta1;
        if (g != cur_g) {
          TileGroupStats(l, tile, g, s, z);
          cur_g = g;
        }
        const int8_t* xu = xq.q.data() + t * l.in_features + u * e;
        const float d = xq.scale[t * units + u], sum = xq.sum[t * units + u];
        for (int i = 0; i < kTileRows; ++i) {
          const uint8_t* c = codes.data() + i * l.in_features + u * e;
          int32_t idot = 0;
          for (int k = 0; k < e; ++k) idot += static_cast<int32_t>(c[k]) * xu[k];
          const float p = static_cast<float>(idot) * d;
          const float v = std::fma(-z[i], sum, p);
          acc[i] = std::fma(s[i], v, acc[i]);
        }
      }
      internal::FinishRows(l, tile, acc, 1, x_perm + t * l.in_features, y + t * y_stride, y_stride);
    }
  }
}

}  // namespace

void SpqrTileMatmulInt8(const SpqrTileLayout& layout, const Int8Activations& xq,
                        const float* x_perm, int64_t tile_begin, int64_t tile_end, float* y,
                        int64_t y_stride, TileIsa isa) {
  if (isa == TileIsa::kAvx512Vnni) {
    internal::SpqrTileMatmulInt8Avx512(layout, xq, x_perm, tile_begin, tile_end, y, y_stride);
  } else {
    MatmulScalar(layout, xq, x_perm, tile_begin, tile_end, y, y_stride);
  }
}

}  // namespace spqr::cpu
