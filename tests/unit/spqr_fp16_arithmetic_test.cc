// The "fp16 arithmetic" decode variant of spqr-format 1 (docs/model-format.md section 3; the
// decode of the authors' transformers checkpoints that spqr-convert imports):
//  - RoundToF16 is round-to-nearest-even to fp16;
//  - the reference decoder (DequantizeSpqrLayer, DecodePermutedRow, DecodeGroupStats,
//    DecodeRowStats) equals a decoder written here with the software fp16 conversion, every step
//    rounded, and differs from the fp32 decode of the same arrays;
//  - the batch-1 and batched products (SpqrMatmul) use those weights;
//  - spqr_meta slot 10 round-trips, is covered by the CRC (a reader ignoring it fails the CRC),
//    unknown values and nonzero reserved slots are refused, fp32 layers keep their old CRC;
//  - config.json's quantization_config must state the layers' variant;
//  - the authors' own layer (tests/data/hf-spqr/authors_k_proj.safetensors: packed by their
//    tensor_compress_interleaved, decoded by their dequantize_compressed), imported with
//    ImportHfSpqrLayer, decodes bit for bit to their output.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/format/bit_packing.h"
#include "engine/format/spqr_layer.h"
#include "engine/format/spqr_matmul.h"
#include "engine/format/spqr_model.h"
#include "engine/format/spqr_tensors.h"
#include "engine/model/safetensors.h"
#include "engine/util/half.h"
#include "gtest/gtest.h"
#include "quantizer/hf_spqr_import.h"
#include "tests/unit/spqr_tensor_store.h"

namespace spqr {
namespace {

// h(x) with the software conversion only (independent of RoundToF16's F16C form).
float H(float x) { return F16ToF32(F32ToF16(x)); }

struct Shape {
  int64_t m, n;
  int wbits, beta1, beta2, stats_bits;
};

// A random valid layer in the range of the authors' checkpoints (weights O(0.01..0.1)), with
// outliers and a permutation.
PackedSpqrLayer RandomLayer(const Shape& c, SpqrDecodeArithmetic arithmetic, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> unit(0.0f, 1.0f);
  PackedSpqrLayer l;
  l.out_features = c.m;
  l.in_features = c.n;
  l.wbits = c.wbits;
  l.beta1 = c.beta1;
  l.beta2 = c.beta2;
  l.stats_bits = c.stats_bits;
  l.decode_arithmetic = arithmetic;
  const int64_t groups = c.n / c.beta1;
  std::vector<uint8_t> codes(static_cast<size_t>(c.m * c.n));
  for (auto& q : codes) q = static_cast<uint8_t>(rng() % (1u << c.wbits));
  l.weight_codes = PackBitRows(codes.data(), c.m, c.n, c.wbits);
  if (c.stats_bits == kFp16Stats) {
    for (int64_t i = 0; i < c.m * groups; ++i) {
      l.scale_f16.push_back(F32ToF16(0.003f + 0.01f * unit(rng)));
      l.zero_f16.push_back(F32ToF16(static_cast<float>(1 << c.wbits) * unit(rng)));
    }
  } else {
    std::vector<uint8_t> sc(static_cast<size_t>(c.m * groups)), zc(sc.size());
    for (auto& q : sc) q = static_cast<uint8_t>(rng() % (1u << c.stats_bits));
    for (auto& q : zc) q = static_cast<uint8_t>(rng() % (1u << c.stats_bits));
    l.scale_codes = PackBitRows(sc.data(), c.m, groups, c.stats_bits);
    l.zero_codes = PackBitRows(zc.data(), c.m, groups, c.stats_bits);
    for (int64_t i = 0; i < l.num_row_blocks() * groups; ++i) {
      l.second_level.push_back(F32ToF16(0.001f + 0.003f * unit(rng)));  // scale of scales
      l.second_level.push_back(F32ToF16(-1.5f + unit(rng)));            // zero of scales
      l.second_level.push_back(F32ToF16(0.3f + 0.4f * unit(rng)));      // scale of zeros
      l.second_level.push_back(F32ToF16(unit(rng) - 0.5f));             // zero of zeros
    }
  }
  l.outlier_row_offsets.push_back(0);
  for (int64_t r = 0; r < c.m; ++r) {
    for (int64_t j = 0; j < c.n; ++j) {
      if (unit(rng) < 0.03f) {
        l.outlier_cols_u16.push_back(static_cast<uint16_t>(j));
        l.outlier_values.push_back(F32ToF16(0.1f * (unit(rng) - 0.5f)));
      }
    }
    l.outlier_row_offsets.push_back(static_cast<uint32_t>(l.outlier_values.size()));
  }
  l.perm.resize(static_cast<size_t>(c.n));
  for (int64_t j = 0; j < c.n; ++j) l.perm[j] = static_cast<uint32_t>(j);
  std::shuffle(l.perm.begin(), l.perm.end(), rng);
  EXPECT_TRUE(ValidateSpqrLayer(l, "random").ok()) << ValidateSpqrLayer(l, "random");
  return l;
}

// The variant written out from docs/model-format.md section 3: dense W_hat in ORIGINAL order.
std::vector<float> DecodeFp16Here(const PackedSpqrLayer& l) {
  const int64_t m = l.out_features, n = l.in_features, groups = l.num_groups();
  const auto codes = UnpackBitRows(l.weight_codes.data(), m, n, l.wbits);
  std::vector<float> out(static_cast<size_t>(m * n));
  for (int64_t r = 0; r < m; ++r) {
    std::vector<float> row(static_cast<size_t>(n));
    for (int64_t g = 0; g < groups; ++g) {
      float s, z;
      if (l.stats_bits == kFp16Stats) {
        s = F16ToF32(l.scale_f16[r * groups + g]);
        z = F16ToF32(l.zero_f16[r * groups + g]);
      } else {
        const int64_t words = BitRowWords(groups, l.stats_bits);
        const uint16_t* sl = &l.second_level[((r / l.beta2) * groups + g) * 4];
        const float qs = static_cast<float>(GetCode(&l.scale_codes[r * words], g, l.stats_bits));
        const float qz = static_cast<float>(GetCode(&l.zero_codes[r * words], g, l.stats_bits));
        s = H(F16ToF32(sl[0]) * H(qs - F16ToF32(sl[1])));
        z = H(F16ToF32(sl[2]) * H(qz - F16ToF32(sl[3])));
      }
      for (int64_t j = g * l.beta1; j < (g + 1) * l.beta1; ++j) {
        row[j] = H(s * H(static_cast<float>(codes[r * n + j]) - z));
      }
    }
    for (uint32_t k = l.outlier_row_offsets[r]; k < l.outlier_row_offsets[r + 1]; ++k) {
      const uint32_t j = l.outlier_col(k);
      row[j] = H(row[j] + F16ToF32(l.outlier_values[k]));
    }
    for (int64_t j = 0; j < n; ++j) out[r * n + l.perm[j]] = row[j];
  }
  return out;
}

int64_t CountBitDifferences(const std::vector<float>& a, const std::vector<float>& b) {
  int64_t count = 0;
  for (size_t i = 0; i < a.size(); ++i) count += std::memcmp(&a[i], &b[i], sizeof(float)) != 0;
  return count;
}

const Shape kShapes[] = {
    {37, 64, 3, 16, 16, 3},  // the authors' configuration, m not a multiple of beta2
    {23, 48, 4, 8, 7, 4},    // other widths, a 2-row last block
    {19, 96, 3, 32, 16, 8},
    {21, 64, 2, 64, 5, 3},            // one group per row (no fused product path either way)
    {17, 64, 3, 16, 16, kFp16Stats},  // fp16 statistics: used as stored
};

TEST(Fp16ArithmeticTest, RoundToF16IsRoundToNearestEven) {
  // Ties: 1 + 2^-11 lies halfway between 1 and 1 + 2^-10 and goes to the even 1; 1 + 3 * 2^-11
  // goes up to 1 + 2^-9. Subnormals, overflow and the largest finite value.
  EXPECT_EQ(RoundToF16(1.0f + std::ldexp(1.0f, -11)), 1.0f);
  EXPECT_EQ(RoundToF16(1.0f + 3 * std::ldexp(1.0f, -11)), 1.0f + std::ldexp(1.0f, -9));
  EXPECT_EQ(RoundToF16(std::ldexp(1.0f, -25)), 0.0f);
  EXPECT_EQ(RoundToF16(3 * std::ldexp(1.0f, -26)), std::ldexp(1.0f, -24));
  EXPECT_EQ(RoundToF16(65504.0f), 65504.0f);
  EXPECT_TRUE(std::isinf(RoundToF16(65520.0f)));
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> exponent(-26.0f, 16.0f);
  for (int i = 0; i < 200000; ++i) {
    const float x = std::exp2(exponent(rng)) * (i % 2 ? 1.0f : -1.0f);
    const float a = RoundToF16(x), b = H(x);
    ASSERT_EQ(std::memcmp(&a, &b, sizeof(float)), 0) << x;
  }
}

TEST(Fp16ArithmeticTest, ReferenceDecoderRoundsEveryStep) {
  for (const Shape& c : kShapes) {
    SCOPED_TRACE(
        absl::StrCat(c.m, "x", c.n, " w", c.wbits, " beta1 ", c.beta1, " stats ", c.stats_bits));
    const PackedSpqrLayer l = RandomLayer(c, SpqrDecodeArithmetic::kFp16, 5);
    auto dense = DequantizeSpqrLayer(l);
    ASSERT_TRUE(dense.ok()) << dense.status();
    const std::vector<float> want = DecodeFp16Here(l);
    ASSERT_EQ(CountBitDifferences(*dense, want), 0);
    // The same arrays decoded with fp32 arithmetic differ almost everywhere: a decoder that
    // ignored the variant would fail above.
    PackedSpqrLayer as_fp32 = l;
    as_fp32.decode_arithmetic = SpqrDecodeArithmetic::kFp32;
    auto dense32 = DequantizeSpqrLayer(as_fp32);
    ASSERT_TRUE(dense32.ok());
    EXPECT_GT(CountBitDifferences(*dense32, want), static_cast<int64_t>(want.size()) / 2);
    // The kernels' per-row statistics equal the per-group ones.
    const int64_t groups = l.num_groups();
    std::vector<float> second(static_cast<size_t>(groups * 4)), scale(groups), zero(groups);
    for (int64_t r = 0; r < c.m; ++r) {
      if (c.stats_bits != kFp16Stats) ConvertBlockSecondLevel(l, r / l.beta2, second.data());
      DecodeRowStats(l, r, second.data(), scale.data(), zero.data());
      for (int64_t g = 0; g < groups; ++g) {
        const GroupStats st = DecodeGroupStats(l, r, g);
        ASSERT_EQ(st.scale, scale[g]) << "row " << r << " group " << g;
        ASSERT_EQ(st.zero, zero[g]) << "row " << r << " group " << g;
        if (c.stats_bits != kFp16Stats) {  // the statistics themselves are fp16 values
          ASSERT_EQ(H(st.scale), st.scale);
          ASSERT_EQ(H(st.zero), st.zero);
        }
      }
    }
  }
}

// y = W_hat x with W_hat the fp16-arithmetic weights, within the fp32 summation bound; the same
// product with the fp32-decoded weights is outside it (so the check can tell the two apart).
TEST(Fp16ArithmeticTest, MatmulUsesTheFp16Weights) {
  for (const Shape& c : kShapes) {
    SCOPED_TRACE(absl::StrCat(c.m, "x", c.n, " beta1 ", c.beta1));
    const PackedSpqrLayer l = RandomLayer(c, SpqrDecodeArithmetic::kFp16, 7);
    const std::vector<float> w16 = DecodeFp16Here(l);
    PackedSpqrLayer as_fp32 = l;
    as_fp32.decode_arithmetic = SpqrDecodeArithmetic::kFp32;
    const std::vector<float> w32 = *DequantizeSpqrLayer(as_fp32);
    for (int64_t batch : {1, 3}) {
      std::mt19937 rng(static_cast<uint32_t>(11 + batch));
      std::normal_distribution<float> normal(0.0f, 1.0f);
      std::vector<float> x(static_cast<size_t>(batch * c.n));
      for (auto& v : x) v = normal(rng);
      std::vector<float> y(static_cast<size_t>(batch * c.m));
      ASSERT_TRUE(SpqrMatmul(l, x.data(), batch, y.data()).ok());
      bool fp32_outside = false;
      for (int64_t b = 0; b < batch; ++b) {
        for (int64_t r = 0; r < c.m; ++r) {
          double exact = 0.0, exact32 = 0.0, magnitude = 0.0;
          for (int64_t j = 0; j < c.n; ++j) {
            exact += static_cast<double>(w16[r * c.n + j]) * x[b * c.n + j];
            exact32 += static_cast<double>(w32[r * c.n + j]) * x[b * c.n + j];
            magnitude += std::fabs(static_cast<double>(w16[r * c.n + j]) * x[b * c.n + j]);
          }
          const double bound = 2.0 * c.n * std::ldexp(1.0, -24) * magnitude;
          ASSERT_NEAR(y[b * c.m + r], exact, bound) << "row " << r << " batch " << b;
          fp32_outside |= std::fabs(exact32 - exact) > 4 * bound;
        }
      }
      EXPECT_TRUE(fp32_outside) << "batch " << batch;
    }
  }
}

TEST(Fp16ArithmeticTest, MetaSlotRoundTripsAndIsCoveredByTheCrc) {
  const PackedSpqrLayer l = RandomLayer(kShapes[0], SpqrDecodeArithmetic::kFp16, 9);
  SpqrTensorStore store(SpqrLayerToTensors(l, "layer"));
  ASSERT_EQ(store.tensors[0].name, "layer.spqr_meta");
  EXPECT_EQ(store.Meta(kMetaDecodeArithmetic), 1u);
  auto back = SpqrLayerFromTensors(store.lookup(), "layer");
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->decode_arithmetic, SpqrDecodeArithmetic::kFp16);
  EXPECT_EQ(CountBitDifferences(*DequantizeSpqrLayer(*back), DecodeFp16Here(l)), 0);

  // The CRC of a payload alone, as a reader that predates slot 10 computes it.
  uint32_t payload_crc = 0;
  for (size_t i = 1; i < store.tensors.size(); ++i) {
    payload_crc = Crc32(store.tensors[i].bytes.data(), store.tensors[i].bytes.size(), payload_crc);
  }
  EXPECT_NE(store.Meta(kMetaCrc32), payload_crc) << "an old reader would accept the layer";
  // Clearing the slot (what an old reader effectively does) fails the CRC.
  store.SetMeta(kMetaDecodeArithmetic, 0);
  auto cleared = SpqrLayerFromTensors(store.lookup(), "layer");
  ASSERT_FALSE(cleared.ok());
  EXPECT_EQ(cleared.status().code(), absl::StatusCode::kDataLoss) << cleared.status();
  store.SetMeta(kMetaDecodeArithmetic, 2);
  auto unknown = SpqrLayerFromTensors(store.lookup(), "layer");
  ASSERT_FALSE(unknown.ok());
  EXPECT_NE(unknown.status().message().find("unknown decode arithmetic 2"), std::string::npos)
      << unknown.status();
  store.SetMeta(kMetaDecodeArithmetic, 1);
  for (int slot = kMetaFirstReserved; slot < kMetaSlots; ++slot) {
    store.SetMeta(slot, 5);
    auto reserved = SpqrLayerFromTensors(store.lookup(), "layer");
    ASSERT_FALSE(reserved.ok());
    EXPECT_NE(reserved.status().message().find(absl::StrCat("reserved slot ", slot, " is 5")),
              std::string::npos)
        << reserved.status();
    store.SetMeta(slot, 0);
  }
  ASSERT_TRUE(SpqrLayerFromTensors(store.lookup(), "layer").ok());

  // fp32 layers are written exactly as before the slot existed: 0 there, CRC of the payload.
  PackedSpqrLayer l32 = l;
  l32.decode_arithmetic = SpqrDecodeArithmetic::kFp32;
  SpqrTensorStore store32(SpqrLayerToTensors(l32, "layer"));
  EXPECT_EQ(store32.Meta(kMetaDecodeArithmetic), 0u);
  EXPECT_EQ(store32.Meta(kMetaCrc32), payload_crc);
}

TEST(Fp16ArithmeticTest, QuantizationConfigMustStateTheVariant) {
  const PackedSpqrLayer l = RandomLayer(kShapes[0], SpqrDecodeArithmetic::kFp16, 13);
  const std::string base =
      R"({"quantization_config": {"quant_method": "spqr", "format_version": 1, "method": "spqr",
          "wbits": 3, "beta1": 16, "beta2": 16, "stats_bits": 3, "tau": null,
          "imported_from": "transformers-spqr")";
  auto parse = [&](const std::string& extra) {
    return ParseSpqrQuantizationConfig(base + extra + "}}", "config.json");
  };
  auto fp32 = parse("");
  ASSERT_TRUE(fp32.ok() && fp32->has_value()) << fp32.status();
  EXPECT_EQ((*fp32)->decode_arithmetic, SpqrDecodeArithmetic::kFp32);
  const absl::Status contradiction = CheckLayerMatchesQuantizationConfig(**fp32, l, "model.x");
  EXPECT_NE(contradiction.message().find(
                "decode arithmetic fp16 in its spqr_meta contradicts decode_arithmetic=fp32"),
            std::string::npos)
      << contradiction;
  auto fp16 = parse(R"(, "decode_arithmetic": "fp16")");
  ASSERT_TRUE(fp16.ok() && fp16->has_value()) << fp16.status();
  EXPECT_TRUE(CheckLayerMatchesQuantizationConfig(**fp16, l, "model.x").ok());
  auto bad = parse(R"(, "decode_arithmetic": "bf16")");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("decode_arithmetic"), std::string::npos) << bad.status();
}

TEST(Fp16ArithmeticTest, AuthorsLayerImportsBitExact) {
  auto file = SafetensorsFile::Open(std::string(SPQR_SOURCE_DIR) +
                                    "/tests/data/hf-spqr/authors_k_proj.safetensors");
  ASSERT_TRUE(file.ok()) << file.status();
  const TensorLookup lookup = [&](const std::string& name) { return (*file)->Find(name); };
  auto layer = ImportHfSpqrLayer(lookup, "layer", 64, 128);
  ASSERT_TRUE(layer.ok()) << layer.status();
  EXPECT_EQ(layer->decode_arithmetic, SpqrDecodeArithmetic::kFp16);
  const TensorView* theirs = lookup("layer.authors_dequant");  // F16 [64][128], permuted order
  ASSERT_NE(theirs, nullptr);
  ASSERT_EQ(theirs->nbytes, 64u * 128u * 2u);
  std::vector<uint16_t> want(64 * 128);
  std::memcpy(want.data(), theirs->data, theirs->nbytes);
  std::vector<float> row(128);
  int64_t outliers_seen = 0;
  for (int64_t r = 0; r < 64; ++r) {
    DecodePermutedRow(*layer, r, row.data());
    for (int64_t j = 0; j < 128; ++j) {
      ASSERT_EQ(row[j], F16ToF32(want[r * 128 + j])) << "row " << r << " permuted column " << j;
    }
    outliers_seen += layer->outlier_row_offsets[r + 1] - layer->outlier_row_offsets[r];
  }
  EXPECT_GT(outliers_seen, 0);
  // And through the whole-layer decoder (original column order).
  auto dense = DequantizeSpqrLayer(*layer);
  ASSERT_TRUE(dense.ok());
  for (int64_t r = 0; r < 64; ++r) {
    for (int64_t j = 0; j < 128; ++j) {
      ASSERT_EQ((*dense)[r * 128 + layer->perm[j]], F16ToF32(want[r * 128 + j]));
    }
  }
}

}  // namespace
}  // namespace spqr
