// The SpQR format module: bit packing, tensor round trip, corruption detection, the reference
// decoder against the quantizer's own weights, and the packed-layer matmul kernel.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <random>
#include <string>

#include "engine/format/bit_packing.h"
#include "engine/format/spqr_layer.h"
#include "engine/format/spqr_matmul.h"
#include "engine/format/spqr_tensors.h"
#include "gtest/gtest.h"
#include "quantizer/spqr_layer_quantizer.h"
#include "tests/unit/quantizer_test_util.h"
#include "tests/unit/spqr_tensor_store.h"

namespace spqr {
namespace {

TEST(BitPackingTest, RoundTripAllWidths) {
  std::mt19937 rng(7);
  for (int bits = 1; bits <= 8; ++bits) {
    for (int64_t cols : {1, 5, 8, 16, 24, 31, 32, 33, 64, 100, 131}) {
      const int64_t rows = 3;
      std::vector<uint8_t> codes(static_cast<size_t>(rows * cols));
      for (auto& c : codes) c = static_cast<uint8_t>(rng() & ((1u << bits) - 1));
      const auto words = PackBitRows(codes.data(), rows, cols, bits);
      ASSERT_EQ(static_cast<int64_t>(words.size()), rows * BitRowWords(cols, bits));
      EXPECT_EQ(UnpackBitRows(words.data(), rows, cols, bits), codes) << bits << " " << cols;
      EXPECT_TRUE(BitRowPaddingIsZero(words.data(), rows, cols, bits));
      std::vector<uint8_t> row(static_cast<size_t>(cols));
      for (int64_t r = 0; r < rows; ++r) {
        UnpackBitRow(words.data() + r * BitRowWords(cols, bits), cols, bits, row.data());
        EXPECT_TRUE(std::equal(row.begin(), row.end(), codes.begin() + r * cols))
            << "UnpackBitRow bits " << bits << " cols " << cols << " row " << r;
      }
      for (int64_t c = 0; c < cols; ++c) {
        EXPECT_EQ(GetCode(words.data() + BitRowWords(cols, bits), c, bits), codes[cols + c]);
      }
    }
  }
}

// Quantizes a random layer; odd shapes on purpose (m not a multiple of beta2).
LayerQuantizationResult Quantize(int64_t m, int64_t n, int wbits, int beta1, int beta2,
                                 int stats_bits, double tau, bool act_order = true) {
  auto w = testing::RandomWeights(m, n, 11 + wbits + beta1);
  for (int64_t i = 0; i < m * n; i += 37) w[i] *= 6.0f;  // heavy tails: some outliers at any wbits
  const auto h = testing::CorrelatedHessian(n, 5);
  SpqrLayerConfig c;
  c.wbits = wbits;
  c.beta1 = beta1;
  c.beta2 = beta2;
  c.stats_bits = stats_bits;
  c.tau = tau;
  c.act_order = act_order;
  auto res = QuantizeLayer(w.data(), m, n, h.data(), c, 1);
  EXPECT_TRUE(res.ok()) << res.status();
  return *std::move(res);
}

void ExpectBitEqual(const std::vector<float>& a, const std::vector<float>& b) {
  ASSERT_EQ(a.size(), b.size());
  EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0);
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::memcmp(&a[i], &b[i], sizeof(float)) != 0) {
      ADD_FAILURE() << "first difference at " << i << ": " << a[i] << " vs " << b[i];
      return;
    }
  }
}

struct FormatCase {
  int wbits, beta1, beta2, stats_bits;
};

class FormatRoundTripTest : public ::testing::TestWithParam<FormatCase> {};

TEST_P(FormatRoundTripTest, PackUnpackDecodeEqualsQuantizer) {
  const FormatCase fc = GetParam();
  const int64_t m = 23, n = 64;  // 23 rows: beta2 = 7 leaves a 2-row last block
  const auto res = Quantize(m, n, fc.wbits, fc.beta1, fc.beta2, fc.stats_bits, 0.2);
  EXPECT_GT(res.num_outliers, 0);
  // Tensors round trip.
  SpqrTensorStore store(SpqrLayerToTensors(res.packed, "layer"));
  auto back = SpqrLayerFromTensors(store.lookup(), "layer");
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->weight_codes, res.packed.weight_codes);
  EXPECT_EQ(back->scale_codes, res.packed.scale_codes);
  EXPECT_EQ(back->zero_codes, res.packed.zero_codes);
  EXPECT_EQ(back->second_level, res.packed.second_level);
  EXPECT_EQ(back->scale_f16, res.packed.scale_f16);
  EXPECT_EQ(back->outlier_row_offsets, res.packed.outlier_row_offsets);
  EXPECT_EQ(back->outlier_cols_u16, res.packed.outlier_cols_u16);
  EXPECT_EQ(back->outlier_values, res.packed.outlier_values);
  EXPECT_EQ(back->perm, res.packed.perm);
  // The reference decoder reproduces the quantizer's own weights bit for bit.
  auto dense = DequantizeSpqrLayer(*back);
  ASSERT_TRUE(dense.ok()) << dense.status();
  ExpectBitEqual(*dense, res.dequantized);
  // Codes decoded from the packed words are within range and match the per-weight decode.
  const auto codes = UnpackBitRows(back->weight_codes.data(), m, n, fc.wbits);
  for (uint8_t q : codes) ASSERT_LT(q, 1 << fc.wbits);
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, FormatRoundTripTest,
    ::testing::Values(FormatCase{2, 8, 7, 3}, FormatCase{3, 8, 7, 3}, FormatCase{4, 8, 7, 3},
                      FormatCase{2, 16, 7, 3}, FormatCase{3, 16, 16, 3}, FormatCase{4, 16, 7, 4},
                      FormatCase{2, 32, 5, 3}, FormatCase{3, 32, 7, 8}, FormatCase{4, 32, 1, 3},
                      FormatCase{3, 16, 7, kFp16Stats}, FormatCase{4, 64, 7, kFp16Stats}));

TEST(SpqrFormatTest, MatmulOnPackedLayerMatchesDenseWithinBound) {
  const int64_t m = 37, n = 96;
  const auto res = Quantize(m, n, 3, 16, 7, 3, 0.1);
  ASSERT_GT(res.num_outliers, 0);
  for (int64_t batch : {1, 3}) {
    const auto x = testing::RandomWeights(batch, n, 99, 1.0f);
    std::vector<float> y(static_cast<size_t>(batch * m));
    ASSERT_TRUE(SpqrMatmul(res.packed, x.data(), batch, y.data()).ok());
    for (int64_t b = 0; b < batch; ++b) {
      for (int64_t r = 0; r < m; ++r) {
        double exact = 0.0, magnitude = 0.0;
        for (int64_t c = 0; c < n; ++c) {
          const double t = static_cast<double>(res.dequantized[r * n + c]) * x[b * n + c];
          exact += t;
          magnitude += std::fabs(t);
        }
        // fp32 accumulation of n products: |error| <= ~2 * n * 2^-24 * sum |w x|.
        const double bound = 2.0 * n * std::ldexp(1.0, -24) * magnitude;
        EXPECT_NEAR(y[b * m + r], exact, bound) << "row " << r << " batch " << b;
      }
    }
  }
}

TEST(SpqrFormatTest, MatmulRowsDecodeEqualsDequantizedRows) {
  const auto res = Quantize(9, 48, 4, 16, 3, 3, 0.1);
  std::vector<float> row(48);
  for (int64_t r = 0; r < 9; ++r) {
    DecodePermutedRow(res.packed, r, row.data());
    for (int64_t j = 0; j < 48; ++j) {
      EXPECT_EQ(row[j], res.dequantized[r * 48 + res.packed.perm[j]]);
    }
  }
}

TEST(SpqrFormatTest, DetectsCorruptPayloadByCrc) {
  const auto res = Quantize(16, 32, 3, 16, 16, 3, 0.2);
  SpqrTensorStore store(SpqrLayerToTensors(res.packed, "layer"));
  store.get("spqr_weight_codes").bytes[5] ^= 0x10;
  store.Rebuild();
  auto back = SpqrLayerFromTensors(store.lookup(), "layer");
  ASSERT_FALSE(back.ok());
  EXPECT_EQ(back.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(back.status().message().find("CRC-32"), std::string::npos) << back.status();
}

TEST(SpqrFormatTest, RejectsUnknownVersion) {
  const auto res = Quantize(16, 32, 3, 16, 16, 3, 0.2);
  SpqrTensorStore store(SpqrLayerToTensors(res.packed, "layer"));
  store.get("spqr_meta").bytes[0] = 7;
  store.Rebuild();
  auto back = SpqrLayerFromTensors(store.lookup(), "layer");
  ASSERT_FALSE(back.ok());
  EXPECT_EQ(back.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(back.status().message().find("version 7"), std::string::npos) << back.status();
}

TEST(SpqrFormatTest, RejectsInconsistentShapesAndMissingTensors) {
  const auto res = Quantize(16, 32, 3, 16, 16, 3, 0.2);
  {
    SpqrTensorStore store(SpqrLayerToTensors(res.packed, "layer"));
    OwnedTensor& t = store.get("spqr_perm");
    t.shape = {static_cast<int64_t>(t.bytes.size() / 4 - 1)};
    t.bytes.resize(t.bytes.size() - 4);
    store.Rebuild();
    auto back = SpqrLayerFromTensors(store.lookup(), "layer");
    ASSERT_FALSE(back.ok());
    EXPECT_EQ(back.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(back.status().message().find("layer.spqr_perm"), std::string::npos) << back.status();
  }
  {
    SpqrTensorStore store(SpqrLayerToTensors(res.packed, "layer"));
    // Meta claims beta1 = 12, which does not divide in_features = 32.
    uint32_t beta1 = 12;
    std::memcpy(store.get("spqr_meta").bytes.data() + 4 * kMetaBeta1, &beta1, 4);
    store.Rebuild();
    auto back = SpqrLayerFromTensors(store.lookup(), "layer");
    ASSERT_FALSE(back.ok());
    EXPECT_NE(back.status().message().find("beta1=12"), std::string::npos) << back.status();
  }
  {
    SpqrTensorStore store(SpqrLayerToTensors(res.packed, "layer"));
    store.views.erase("layer.spqr_outlier_values");
    auto back = SpqrLayerFromTensors(store.lookup(), "layer");
    ASSERT_FALSE(back.ok());
    EXPECT_EQ(back.status().code(), absl::StatusCode::kNotFound);
    EXPECT_NE(back.status().message().find("layer.spqr_outlier_values"), std::string::npos);
  }
  EXPECT_FALSE(HasSpqrLayer(SpqrTensorStore({}).lookup(), "layer"));
}

TEST(SpqrFormatTest, ValidateCatchesStructuralCorruption) {
  const auto res = Quantize(16, 32, 3, 16, 16, 3, 0.3);
  ASSERT_GE(res.num_outliers, 2);
  ASSERT_TRUE(ValidateSpqrLayer(res.packed, "l").ok());
  auto expect_error = [](const PackedSpqrLayer& l, const std::string& needle) {
    const absl::Status st = ValidateSpqrLayer(l, "l");
    ASSERT_FALSE(st.ok()) << needle;
    EXPECT_NE(st.message().find(needle), std::string::npos) << st;
  };
  {
    PackedSpqrLayer l = res.packed;
    l.perm[1] = l.perm[0];
    expect_error(l, "perm is not a permutation");
  }
  {
    PackedSpqrLayer l = res.packed;
    l.outlier_row_offsets[16] += 1;
    expect_error(l, "outlier_row_offsets");
  }
  {
    // Found by spqr_format_fuzz: offsets that rise past nnz and fall back to it at the last row
    // made the row loop read column ids beyond the array before the decrease was seen.
    PackedSpqrLayer l = res.packed;
    l.outlier_row_offsets[1] = l.outlier_row_offsets[16] + 1000;
    for (int r = 2; r < 16; ++r) l.outlier_row_offsets[r] = l.outlier_row_offsets[16];
    expect_error(l, "exceeds the");
  }
  {
    PackedSpqrLayer l = res.packed;
    l.outlier_cols_u16[0] = 32;
    expect_error(l, "out of range");
  }
  {
    PackedSpqrLayer l = res.packed;
    l.outlier_values[0] = 0x7c00;  // +inf
    expect_error(l, "non-finite outlier");
  }
  {
    PackedSpqrLayer l = res.packed;
    l.second_level[3] = 0x7e00;  // NaN
    expect_error(l, "non-finite second-level");
  }
  {
    PackedSpqrLayer l = res.packed;
    l.weight_codes.pop_back();
    expect_error(l, "weight_codes");
  }
  {
    PackedSpqrLayer l = res.packed;
    l.wbits = 9;
    expect_error(l, "wbits must be in 2..8, got 9");
  }
  {
    // 32 columns x 3 bits = 96 bits: rows end on a word boundary, so use stats codes (2 codes x
    // 3 bits per row) to check padding.
    PackedSpqrLayer l = res.packed;
    l.scale_codes[0] |= 1u << 31;
    expect_error(l, "padding");
  }
}

TEST(SpqrFormatTest, WideColumnIdsAbove65535Inputs) {
  // RTN needs no Hessian, so a very wide layer stays cheap; outliers are injected by hand.
  const int64_t m = 2, n = 65552;
  const auto w = testing::RandomWeights(m, n, 3);
  SpqrLayerConfig c;
  c.method = SpqrLayerConfig::Method::kRtn;
  c.act_order = false;
  c.wbits = 4;
  c.beta1 = 16;
  c.stats_bits = kFp16Stats;
  auto res = QuantizeLayer(w.data(), m, n, nullptr, c, 1);
  ASSERT_TRUE(res.ok()) << res.status();
  PackedSpqrLayer l = res->packed;
  ASSERT_TRUE(l.wide_column_ids());
  l.outlier_row_offsets = {0, 1, 3};
  l.outlier_cols_u32 = {65540, 3, 65551};
  l.outlier_values = {F32ToF16(0.5f), F32ToF16(-0.25f), F32ToF16(1.0f)};
  SpqrTensorStore store(SpqrLayerToTensors(l, "layer"));
  EXPECT_EQ(store.get("spqr_outlier_cols").dtype, DType::kU32);
  auto back = SpqrLayerFromTensors(store.lookup(), "layer");
  ASSERT_TRUE(back.ok()) << back.status();
  auto dense = DequantizeSpqrLayer(*back);
  ASSERT_TRUE(dense.ok());
  EXPECT_EQ((*dense)[65540], res->dequantized[65540] + 0.5f);
  EXPECT_EQ((*dense)[n + 65551], res->dequantized[n + 65551] + 1.0f);
  EXPECT_EQ((*dense)[n + 3], res->dequantized[n + 3] - 0.25f);
  EXPECT_EQ((*dense)[7], res->dequantized[7]);
}

}  // namespace
}  // namespace spqr
