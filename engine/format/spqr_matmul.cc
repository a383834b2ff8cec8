#include "engine/format/spqr_matmul.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "engine/format/bit_packing.h"
#include "engine/util/half.h"

namespace spqr {

void GatherPermutedInputs(const PackedSpqrLayer& layer, const float* x, int64_t batch,
                          float* x_perm) {
  const int64_t n = layer.in_features;
  for (int64_t b = 0; b < batch; ++b) {
    const float* src = x + b * n;
    float* dst = x_perm + b * n;
    for (int64_t j = 0; j < n; ++j) dst[j] = src[layer.perm[j]];
  }
}

namespace {

// Dot product with 8 independent partial sums (lets the compiler vectorize without -ffast-math;
// the order is fixed, so results are deterministic).
float Dot(const float* a, const float* b, int64_t n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    for (int k = 0; k < 8; ++k) acc[k] += a[j + k] * b[j + k];
  }
  float tail = 0.0f;
  for (; j < n; ++j) tail += a[j] * b[j];
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7])) + tail;
}

// Batch-1 row product with the decode fused into the dot product for a compile-time group width:
// each weight is computed exactly as DequantWeight (scale * (q - zero)) in registers and
// multiplied with x at once, in B1 independent lanes. Outliers are added afterwards as
// residual * x (the same sum, rounded differently; within the documented bound).
template <int B1>
float FusedRowDot(const PackedSpqrLayer& layer, int64_t r, const uint8_t* __restrict codes,
                  const float* __restrict scale, const float* __restrict zero,
                  const float* __restrict x) {
  const int64_t groups = layer.num_groups();
  float acc[B1] = {};
  for (int64_t g = 0; g < groups; ++g) {
    const uint8_t* q = codes + g * B1;
    const float* xg = x + g * B1;
    const float s = scale[g], z = zero[g];
    for (int k = 0; k < B1; ++k) {
      const float w = s * (static_cast<float>(q[k]) - z);
      acc[k] += w * xg[k];
    }
  }
  float sum = 0.0f;
  for (int k = 0; k < B1; ++k) sum += acc[k];
  // An explicit fma, not `sparse += a * b`: whether the compiler contracts that expression
  // differed between this file and the CPU kernel's on one machine (1 ulp on rows with outliers),
  // and every path must give these bits.
  float sparse = 0.0f;
  for (uint32_t k = layer.outlier_row_offsets[r]; k < layer.outlier_row_offsets[r + 1]; ++k) {
    sparse = std::fma(F16ToF32(layer.outlier_values[k]), x[layer.outlier_col(k)], sparse);
  }
  return sum + sparse;
}

}  // namespace

void SpqrMatmulRows(const PackedSpqrLayer& layer, const float* x_perm, int64_t batch, float* y,
                    int64_t y_stride, int64_t row_begin, int64_t row_end, float* row_scratch) {
  const int64_t n = layer.in_features, groups = layer.num_groups();
  const bool bilevel = layer.stats_bits != kFp16Stats;
  std::vector<float> second(bilevel ? static_cast<size_t>(groups * 4) : 0);
  std::vector<float> scale(static_cast<size_t>(groups)), zero(static_cast<size_t>(groups));
  std::vector<uint8_t> codes(static_cast<size_t>(n));
  int64_t cached_block = -1;
  for (int64_t r = row_begin; r < row_end; ++r) {
    // Second-level values are shared by beta2 consecutive rows: convert them once per block.
    if (bilevel && r / layer.beta2 != cached_block) {
      cached_block = r / layer.beta2;
      ConvertBlockSecondLevel(layer, cached_block, second.data());
    }
    DecodeRowStats(layer, r, second.data(), scale.data(), zero.data());
    if (batch == 1 && (layer.beta1 == 8 || layer.beta1 == 16 || layer.beta1 == 32)) {
      UnpackBitRow(layer.weight_codes.data() + r * BitRowWords(n, layer.wbits), n, layer.wbits,
                   codes.data());
      const float* sc = scale.data();
      const float* ze = zero.data();
      y[r] = layer.beta1 == 8    ? FusedRowDot<8>(layer, r, codes.data(), sc, ze, x_perm)
             : layer.beta1 == 16 ? FusedRowDot<16>(layer, r, codes.data(), sc, ze, x_perm)
                                 : FusedRowDot<32>(layer, r, codes.data(), sc, ze, x_perm);
      continue;
    }
    // Decoding a row costs about as much as one dot product; it is done once and reused for every
    // input of the batch.
    DecodePermutedRowWithStats(layer, r, scale.data(), zero.data(), codes.data(), row_scratch);
    for (int64_t b = 0; b < batch; ++b) y[b * y_stride + r] = Dot(row_scratch, x_perm + b * n, n);
  }
}

absl::Status SpqrMatmul(const PackedSpqrLayer& layer, const float* x, int64_t batch, float* y) {
  if (batch < 0) return absl::InvalidArgumentError(absl::StrCat("batch must be >= 0, got ", batch));
  if (static_cast<int64_t>(layer.perm.size()) != layer.in_features ||
      static_cast<int64_t>(layer.outlier_row_offsets.size()) != layer.out_features + 1) {
    return absl::InvalidArgumentError("SpqrMatmul: layer arrays do not match its shape");
  }
  std::vector<float> x_perm(static_cast<size_t>(batch * layer.in_features));
  std::vector<float> scratch(static_cast<size_t>(layer.in_features));
  GatherPermutedInputs(layer, x, batch, x_perm.data());
  SpqrMatmulRows(layer, x_perm.data(), batch, y, layer.out_features, 0, layer.out_features,
                 scratch.data());
  return absl::OkStatus();
}

}  // namespace spqr
