// The CPU tile layout of SpQR layers and the int8 kernel over it, on random packed layers of every
// configuration the layout takes (wbits 2/3/4, beta1 8..64, 3..8-bit or fp16 statistics, beta2
// 16..64, odd row counts, outliers, 32-bit outlier columns):
//  - the layout decodes bit-exactly to the format's DecodePermutedRow, and its outlier steps give
//    back each row's outliers in the format's order;
//  - every kernel implementation this CPU runs equals the scalar reference bit for bit, for token
//    counts 1..11 (so also across the 8-token blocking);
//  - a token's result does not depend on the other tokens of the call;
//  - the int8 product is within the bound that activation rounding allows of the exact product
//    (plus, for "fp16 arithmetic" layers, the per-weight fp16 rounding the int8 kernel does not
//    model, measured);
//  - the exact CPU kernel (cpu::Linear) gives an "fp16 arithmetic" layer exactly the format's
//    batch-1 product for every token count.
#include "engine/backend/cpu/spqr_tile_kernel.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <iostream>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/backend/cpu/linear.h"
#include "engine/backend/cpu/spqr_tile_layout.h"
#include "engine/format/bit_packing.h"
#include "engine/format/spqr_layer.h"
#include "engine/format/spqr_matmul.h"
#include "engine/util/half.h"
#include "gtest/gtest.h"

namespace spqr::cpu {
namespace {

struct Config {
  int64_t m, n;
  int wbits, beta1, beta2, stats_bits;
  double outlier_share;
  bool fp16_arithmetic = false;  // the "fp16 arithmetic" decode variant
};

std::string Name(const Config& c) {
  return absl::StrCat(c.m, "x", c.n, "_w", c.wbits, "_b", c.beta1, "_", c.beta2, "_s", c.stats_bits,
                      "_o", static_cast<int>(c.outlier_share * 1000),
                      c.fp16_arithmetic ? "_fp16arith" : "");
}

// A random but valid packed layer (codes, statistics and second-level values uniformly random,
// second-level values chosen so weights stay O(0.1)).
std::shared_ptr<const PackedSpqrLayer> RandomLayer(const Config& c, uint32_t seed) {
  std::mt19937 rng(seed);
  auto l = std::make_shared<PackedSpqrLayer>();
  l->out_features = c.m;
  l->in_features = c.n;
  l->wbits = c.wbits;
  l->beta1 = c.beta1;
  l->beta2 = c.beta2;
  l->stats_bits = c.stats_bits;
  if (c.fp16_arithmetic) l->decode_arithmetic = SpqrDecodeArithmetic::kFp16;
  const int64_t groups = c.n / c.beta1;
  std::vector<uint8_t> codes(static_cast<size_t>(c.m * c.n));
  for (auto& q : codes) q = static_cast<uint8_t>(rng() % (1u << c.wbits));
  l->weight_codes = PackBitRows(codes.data(), c.m, c.n, c.wbits);
  std::uniform_real_distribution<float> unit(0.0f, 1.0f);
  if (c.stats_bits == kFp16Stats) {
    for (int64_t i = 0; i < c.m * groups; ++i) {
      l->scale_f16.push_back(F32ToF16(0.01f + 0.02f * unit(rng)));
      l->zero_f16.push_back(F32ToF16(static_cast<float>(1 << c.wbits) * unit(rng)));
    }
  } else {
    std::vector<uint8_t> sc(static_cast<size_t>(c.m * groups)), zc(sc.size());
    for (auto& q : sc) q = static_cast<uint8_t>(rng() % (1u << c.stats_bits));
    for (auto& q : zc) q = static_cast<uint8_t>(rng() % (1u << c.stats_bits));
    l->scale_codes = PackBitRows(sc.data(), c.m, groups, c.stats_bits);
    l->zero_codes = PackBitRows(zc.data(), c.m, groups, c.stats_bits);
    const float levels = static_cast<float>((1 << c.stats_bits) - 1);
    for (int64_t i = 0; i < l->num_row_blocks() * groups; ++i) {
      l->second_level.push_back(F32ToF16(0.02f / levels * (0.5f + unit(rng))));  // scale of scales
      l->second_level.push_back(F32ToF16(-0.5f * unit(rng)));                    // zero of scales
      l->second_level.push_back(F32ToF16(static_cast<float>(1 << c.wbits) / levels * unit(rng)));
      l->second_level.push_back(F32ToF16(-unit(rng)));
    }
  }
  l->outlier_row_offsets.push_back(0);
  for (int64_t r = 0; r < c.m; ++r) {
    for (int64_t j = 0; j < c.n; ++j) {
      if (unit(rng) < c.outlier_share) {
        if (l->wide_column_ids()) {
          l->outlier_cols_u32.push_back(static_cast<uint32_t>(j));
        } else {
          l->outlier_cols_u16.push_back(static_cast<uint16_t>(j));
        }
        l->outlier_values.push_back(F32ToF16(unit(rng) - 0.5f));
      }
    }
    l->outlier_row_offsets.push_back(static_cast<uint32_t>(l->outlier_values.size()));
  }
  l->perm.resize(static_cast<size_t>(c.n));
  for (int64_t j = 0; j < c.n; ++j) l->perm[j] = static_cast<uint32_t>(j);
  std::shuffle(l->perm.begin(), l->perm.end(), rng);
  EXPECT_TRUE(ValidateSpqrLayer(*l, "random").ok()) << ValidateSpqrLayer(*l, "random");
  return l;
}

std::vector<float> RandomInputs(int64_t tokens, int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(tokens * n));
  for (auto& v : x) v = normal(rng);
  // A few large activations, as real models have, so per-unit scaling matters.
  for (int64_t t = 0; t < tokens; ++t) x[t * n + (7 * t) % n] *= 20.0f;
  return x;
}

std::vector<float> RunKernel(const SpqrTileLayout& layout, const std::vector<float>& x,
                             int64_t tokens, TileIsa isa) {
  Int8Activations xq;
  QuantizeActivations(x.data(), tokens, layout.in_features, layout.unit_cols, &xq, isa);
  std::vector<float> y(static_cast<size_t>(tokens * layout.out_features), -1.0f);
  SpqrTileMatmulInt8(layout, xq, x.data(), 0, layout.row_tiles, y.data(), layout.out_features, isa);
  return y;
}

class TileKernelTest : public ::testing::TestWithParam<Config> {};

TEST_P(TileKernelTest, LayoutDecodesLikeTheFormat) {
  const Config c = GetParam();
  auto layer = RandomLayer(c, 1);
  auto layout = BuildSpqrTileLayout(layer);
  ASSERT_TRUE(layout.ok()) << layout.status();
  std::vector<float> want(static_cast<size_t>(c.n)), got(want.size());
  for (int64_t r = 0; r < c.m; ++r) {
    DecodePermutedRow(*layer, r, want.data());
    DecodeTileLayoutRow(**layout, r, got.data());
    // The outlier steps give back the row's outliers in CSR order.
    const std::vector<TileLayoutOutlier> outliers = TileLayoutRowOutliers(**layout, r);
    ASSERT_EQ(outliers.size(), layer->outlier_row_offsets[r + 1] - layer->outlier_row_offsets[r]);
    for (size_t i = 0; i < outliers.size(); ++i) {
      const uint32_t k = layer->outlier_row_offsets[r] + static_cast<uint32_t>(i);
      ASSERT_EQ(outliers[i].col, layer->outlier_col(k)) << "row " << r << " outlier " << i;
      ASSERT_EQ(outliers[i].value, layer->outlier_values[k]) << "row " << r << " outlier " << i;
      float& w = got[outliers[i].col];
      w = AddOutlier(layer->fp16_arithmetic(), w, F16ToF32(outliers[i].value));
    }
    for (int64_t j = 0; j < c.n; ++j) ASSERT_EQ(got[j], want[j]) << "row " << r << " col " << j;
  }
}

TEST_P(TileKernelTest, EveryImplementationEqualsTheScalarReference) {
  const Config c = GetParam();
  auto layout = BuildSpqrTileLayout(RandomLayer(c, 2));
  ASSERT_TRUE(layout.ok()) << layout.status();
  if (!TileIsaSupported(TileIsa::kAvx512Vnni)) GTEST_SKIP() << "no AVX-512 VNNI on this CPU";
  for (int64_t tokens : {1, 2, 5, 8, 11, 19}) {  // 11, 19: later blocks reuse the first's decode
    const std::vector<float> x = RandomInputs(tokens, c.n, 3);
    const std::vector<float> want = RunKernel(**layout, x, tokens, TileIsa::kScalar);
    const std::vector<float> got = RunKernel(**layout, x, tokens, TileIsa::kAvx512Vnni);
    for (size_t i = 0; i < want.size(); ++i) {
      ASSERT_EQ(got[i], want[i]) << "tokens " << tokens << " index " << i;
    }
  }
}

TEST_P(TileKernelTest, TokensDoNotDependOnTheirBatch) {
  const Config c = GetParam();
  auto layout = BuildSpqrTileLayout(RandomLayer(c, 4));
  ASSERT_TRUE(layout.ok()) << layout.status();
  const int64_t tokens = 11;
  const std::vector<float> x = RandomInputs(tokens, c.n, 5);
  const std::vector<float> all = RunKernel(**layout, x, tokens, BestTileIsa());
  for (int64_t t = 0; t < tokens; ++t) {
    const std::vector<float> one(x.begin() + t * c.n, x.begin() + (t + 1) * c.n);
    const std::vector<float> y = RunKernel(**layout, one, 1, BestTileIsa());
    for (int64_t r = 0; r < c.m; ++r) ASSERT_EQ(y[r], all[t * c.m + r]) << "token " << t;
  }
}

// |y_int8 - y_exact| <= sum over units of (sum_j |w_j|) * max|x_unit| / 254 (each input moves by
// at most half a quantization step, d / 2 = max|x_unit| / 254), plus fp32 rounding.
TEST_P(TileKernelTest, Int8ProductIsWithinTheActivationRoundingBound) {
  const Config c = GetParam();
  auto layer = RandomLayer(c, 6);
  auto layout = BuildSpqrTileLayout(layer);
  ASSERT_TRUE(layout.ok()) << layout.status();
  const int64_t tokens = 3;
  const std::vector<float> x = RandomInputs(tokens, c.n, 7);
  const std::vector<float> got = RunKernel(**layout, x, tokens, BestTileIsa());
  std::vector<float> w(static_cast<size_t>(c.n));
  const int e = (*layout)->unit_cols;
  for (int64_t r = 0; r < c.m; ++r) {
    DecodePermutedRow(*layer, r, w.data());
    for (int64_t t = 0; t < tokens; ++t) {
      const float* xt = x.data() + t * c.n;
      double exact = 0.0, bound = 0.0, magnitude = 0.0;
      for (int64_t u = 0; u < c.n / e; ++u) {
        double amax = 0.0, wsum = 0.0;
        for (int k = 0; k < e; ++k) {
          const int64_t j = u * e + k;
          exact += static_cast<double>(w[j]) * xt[j];
          magnitude += std::fabs(static_cast<double>(w[j]) * xt[j]);
          amax = std::max(amax, std::fabs(static_cast<double>(xt[j])));
          wsum += std::fabs(static_cast<double>(w[j]));
        }
        bound += wsum * amax / 254.0;
      }
      bound = bound * 1.01 + 1e-5 * magnitude + 1e-6;
      // An "fp16 arithmetic" layer's weights are h(h(s * h(q - z)) + residual); the kernel uses
      // the fp16-rounded s and z but s * (q - z) + residual unrounded: at most three fp16
      // roundings (2^-11 relative each) per weight.
      if (c.fp16_arithmetic) bound += 3.0 * std::ldexp(1.0, -11) * magnitude;
      ASSERT_LE(std::fabs(got[t * c.m + r] - exact), bound) << "row " << r << " token " << t;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Configs, TileKernelTest,
    ::testing::Values(Config{37, 64, 4, 16, 16, 3, 0.01}, Config{48, 128, 3, 16, 16, 3, 0.005},
                      Config{50, 96, 2, 16, 32, 3, 0.0}, Config{33, 64, 3, 8, 64, 3, 0.02},
                      Config{16, 128, 4, 32, 16, 4, 0.0}, Config{21, 128, 4, 64, 16, 8, 0.01},
                      Config{29, 48, 3, 16, 16, kFp16Stats, 0.01},
                      Config{40, 64, 4, 8, 16, kFp16Stats, 0.0}, Config{19, 32, 2, 8, 48, 3, 0.05},
                      Config{37, 128, 3, 16, 16, 3, 0.02, true},
                      Config{24, 64, 4, 8, 32, 4, 0.01, true},
                      Config{29, 48, 3, 16, 16, kFp16Stats, 0.01, true},
                      // Many outlier steps per tile with ragged masks (up to ~45 per row).
                      Config{35, 96, 3, 16, 16, 3, 0.3},
                      // Column ids past 16 bits (in_features > 65535).
                      Config{3, 65552, 4, 16, 16, 3, 0.002}),
    [](const ::testing::TestParamInfo<Config>& info) { return Name(info.param); });

// What the int8 kernel does not model on an "fp16 arithmetic" layer (the per-weight fp16 rounding;
// its statistics are the variant's), measured next to what int8 activations cost anyway: the
// kernel against the exact product, relative to sum |w x|, worst over rows and tokens.
TEST(TileLayoutTest, Int8KernelDeviationOnFp16ArithmeticLayers) {
  const Config c{64, 256, 3, 16, 16, 3, 0.01, true};
  auto layer = RandomLayer(c, 21);
  auto layout = BuildSpqrTileLayout(layer);
  ASSERT_TRUE(layout.ok()) << layout.status();
  const int64_t tokens = 4;
  const std::vector<float> x = RandomInputs(tokens, c.n, 22);
  const std::vector<float> got = RunKernel(**layout, x, tokens, BestTileIsa());
  // The same kernel on weights that are exactly what it computes (the fp16-rounded statistics
  // applied in fp32, residual added in fp32), i.e. its int8 activation error alone.
  std::vector<float> w(static_cast<size_t>(c.n)), w_unrounded(w.size());
  double worst = 0.0, worst_model = 0.0;
  for (int64_t r = 0; r < c.m; ++r) {
    DecodePermutedRow(*layer, r, w.data());
    for (int64_t j = 0; j < c.n; ++j) {
      const GroupStats st = DecodeGroupStats(*layer, r, j / c.beta1);
      w_unrounded[j] = DequantWeight(
          GetCode(layer->weight_codes.data() + r * BitRowWords(c.n, c.wbits), j, c.wbits), st.scale,
          st.zero);
    }
    for (uint32_t k = layer->outlier_row_offsets[r]; k < layer->outlier_row_offsets[r + 1]; ++k) {
      w_unrounded[layer->outlier_col(k)] += F16ToF32(layer->outlier_values[k]);
    }
    for (int64_t t = 0; t < tokens; ++t) {
      double exact = 0.0, model = 0.0, magnitude = 0.0;
      for (int64_t j = 0; j < c.n; ++j) {
        exact += static_cast<double>(w[j]) * x[t * c.n + j];
        model += static_cast<double>(w_unrounded[j]) * x[t * c.n + j];
        magnitude += std::fabs(static_cast<double>(w[j]) * x[t * c.n + j]);
      }
      worst = std::max(worst, std::fabs(got[t * c.m + r] - exact) / magnitude);
      worst_model = std::max(worst_model, std::fabs(exact - model) / magnitude);
    }
  }
  std::cout << "int8 kernel vs exact on an fp16-arithmetic layer: max |diff| / sum|w x| = " << worst
            << "; of which the unmodelled fp16 rounding alone (fp32-applied vs fp16 weights): "
            << worst_model << "\n";
  EXPECT_LT(worst_model, 3.0 * std::ldexp(1.0, -11));
  EXPECT_LT(worst, 0.02);
}

// The exact CPU kernel on "fp16 arithmetic" layers: every token gets the format's batch-1 product
// (which uses the variant's weights, spqr_fp16_arithmetic_test), whatever the token count, for the
// fused tiles (beta1 8/16/32; codes read packed or as bytes) and for a group width without them.
TEST(SpqrExactKernelTest, Fp16ArithmeticLayerEqualsTheFormatsBatchOneProduct) {
  for (const Config& c :
       {Config{40, 64, 3, 16, 16, 3, 0.02, true}, Config{24, 96, 4, 32, 8, kFp16Stats, 0.01, true},
        Config{18, 64, 2, 8, 16, 4, 0.05, true},
        Config{20, 64, 5, 8, 16, 3, 0.03, true},  // codes unpacked to bytes
        Config{21, 48, 3, 48, 16, 3, 0.02, true}}) {
    SCOPED_TRACE(Name(c));
    LinearTensors lin;
    lin.spqr = RandomLayer(c, 31);
    lin.out_features = c.m;
    lin.in_features = c.n;
    for (int64_t num_tokens : {1, 3, 7}) {
      const std::vector<float> x = RandomInputs(num_tokens, c.n, 32);
      PackedActivations packed;
      PackActivations(x.data(), num_tokens, c.n, &packed);
      std::vector<float> y(static_cast<size_t>(num_tokens * c.m));
      Linear(lin, packed, y.data(), 2);
      for (int64_t t = 0; t < num_tokens; ++t) {
        std::vector<float> want(static_cast<size_t>(c.m));
        ASSERT_TRUE(SpqrMatmul(*lin.spqr, x.data() + t * c.n, 1, want.data()).ok());
        for (int64_t r = 0; r < c.m; ++r) {
          ASSERT_EQ(y[t * c.m + r], want[r])
              << "token " << t << " of " << num_tokens << " row " << r;
        }
      }
    }
  }
}

// Same bytes from every implementation of the activation quantization, on inputs with NaN,
// infinities, all-zero units, signed zeros and exact rounding ties; and the same whether the tokens
// are quantized in one call or by blocks (as SpqrLinearTiled splits them across threads).
TEST(Int8ActivationsTest, EveryImplementationAndSplitQuantizesAlike) {
  const auto same_bits = [](const auto& a, const auto& b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(a[0])) == 0;
  };
  for (const int unit_cols : {8, 16}) {
    for (const int64_t tokens : {1, 3, 4, 13, 19}) {
      const int64_t n = 400;  // 25 or 50 units: more than one group of 16
      std::vector<float> x = RandomInputs(tokens, n, 11);
      x[5] = std::nanf("");
      x[17] = -0.0f;
      if (tokens > 1) x[n + 3] = std::numeric_limits<float>::infinity();
      for (int64_t j = 32; j < 48; ++j) x[j] = 0.0f;  // all-zero units
      x[300] = -std::numeric_limits<float>::infinity();
      // Ties: with amax 127 the scale is 1, so x * inv is x and 2.5 / -3.5 round to even.
      for (int64_t j = 48; j < 64; ++j) x[j] = static_cast<float>(j - 56) + 0.5f;
      x[48] = 127.0f;
      Int8Activations scalar;
      QuantizeActivations(x.data(), tokens, n, unit_cols, &scalar, TileIsa::kScalar);
      EXPECT_EQ(scalar.q[5], -127);  // NaN input
      if (TileIsaSupported(TileIsa::kAvx512Vnni)) {
        Int8Activations vec;
        QuantizeActivations(x.data(), tokens, n, unit_cols, &vec, TileIsa::kAvx512Vnni);
        EXPECT_TRUE(same_bits(vec.q, scalar.q)) << unit_cols << " " << tokens;
        EXPECT_TRUE(same_bits(vec.scale, scalar.scale)) << unit_cols << " " << tokens;
        EXPECT_TRUE(same_bits(vec.sum, scalar.sum)) << unit_cols << " " << tokens;
        EXPECT_TRUE(same_bits(vec.x_blocks, scalar.x_blocks)) << unit_cols << " " << tokens;
      }
      Int8Activations split;
      split.x_blocks.assign(1000, 9.0f);  // stale contents of an earlier call must not survive
      PrepareInt8Activations(tokens, n, unit_cols, &split);
      for (int64_t t0 = 0; t0 < tokens; t0 += Int8Activations::kTokenBlock) {
        QuantizeActivationTokens(x.data(), t0,
                                 std::min<int64_t>(tokens, t0 + Int8Activations::kTokenBlock),
                                 &split, BestTileIsa());
      }
      EXPECT_TRUE(same_bits(split.q, scalar.q)) << unit_cols << " " << tokens;
      EXPECT_TRUE(same_bits(split.scale, scalar.scale)) << unit_cols << " " << tokens;
      EXPECT_TRUE(same_bits(split.sum, scalar.sum)) << unit_cols << " " << tokens;
      EXPECT_TRUE(same_bits(split.x_blocks, scalar.x_blocks)) << unit_cols << " " << tokens;
    }
  }
}

TEST(TileLayoutTest, UnsupportedConfigurationsSayWhy) {
  PackedSpqrLayer l;
  l.in_features = 40;
  l.wbits = 4;
  l.beta1 = 8;
  l.stats_bits = 3;
  l.beta2 = 16;
  EXPECT_NE(TileLayoutSupports(l).message().find("in_features 40"), std::string::npos);
  l.in_features = 64;
  l.wbits = 5;
  EXPECT_NE(TileLayoutSupports(l).message().find("wbits 5"), std::string::npos);
  l.wbits = 3;
  l.beta2 = 8;
  EXPECT_NE(TileLayoutSupports(l).message().find("beta2 8"), std::string::npos);
  l.beta2 = 32;
  l.beta1 = 24;
  EXPECT_NE(TileLayoutSupports(l).message().find("beta1 24"), std::string::npos);
  l.beta1 = 32;
  EXPECT_TRUE(TileLayoutSupports(l).ok());
}

}  // namespace
}  // namespace spqr::cpu
