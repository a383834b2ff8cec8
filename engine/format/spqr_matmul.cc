#include "engine/format/spqr_matmul.h"

#include "absl/strings/str_cat.h"

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
