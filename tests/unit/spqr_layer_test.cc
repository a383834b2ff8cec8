// SpQR-specific behaviour of the layer quantizer: outliers, leave-one-out fitting, bilevel
// statistics, act-order, validation, determinism.
#include "engine/format/spqr_layer.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>

#include "engine/format/spqr_matmul.h"
#include "gtest/gtest.h"
#include "quantizer/group_stats.h"
#include "quantizer/outliers.h"
#include "quantizer/spqr_layer_quantizer.h"
#include "tests/unit/quantizer_test_util.h"

namespace spqr {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

SpqrLayerConfig SpqrConfig(double tau) {
  SpqrLayerConfig c;
  c.wbits = 3;
  c.beta1 = 16;
  c.beta2 = 16;
  c.stats_bits = 3;
  c.tau = tau;
  return c;
}

TEST(SpqrLayerTest, NoOutliersWhenTauIsInfinite) {
  const int64_t m = 48, n = 64;
  const auto w = testing::RandomWeights(m, n, 1);
  const auto h = testing::CorrelatedHessian(n, 2);
  auto res = QuantizeLayer(w.data(), m, n, h.data(), SpqrConfig(kInf), 2);
  ASSERT_TRUE(res.ok()) << res.status();
  EXPECT_EQ(res->num_outliers, 0);
  EXPECT_TRUE(std::isinf(res->outlier_threshold));
  EXPECT_DOUBLE_EQ(res->formula_bits, 3.625);
}

TEST(SpqrLayerTest, OutlierShareFallsAsTauRises) {
  const int64_t m = 64, n = 64;
  auto w = testing::RandomWeights(m, n, 3);
  // Heavy tails, as in real LLM weights.
  std::mt19937 rng(4);
  for (int k = 0; k < 40; ++k) w[rng() % (m * n)] *= 8.0f;
  const auto h = testing::CorrelatedHessian(n, 5);
  double previous = 1.0;
  std::vector<double> shares;
  for (double tau : {0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 4.0}) {
    auto res = QuantizeLayer(w.data(), m, n, h.data(), SpqrConfig(tau), 2);
    ASSERT_TRUE(res.ok()) << res.status();
    EXPECT_LE(res->outlier_fraction, previous) << "tau " << tau;
    previous = res->outlier_fraction;
    shares.push_back(res->outlier_fraction);
  }
  EXPECT_GT(shares.front(), 0.01);
  EXPECT_LT(shares.back(), shares.front() / 4);
}

TEST(SpqrLayerTest, OutliersReduceHessianError) {
  const int64_t m = 64, n = 64;
  auto w = testing::RandomWeights(m, n, 3);
  std::mt19937 rng(4);
  for (int k = 0; k < 40; ++k) w[rng() % (m * n)] *= 8.0f;
  const auto h = testing::CorrelatedHessian(n, 5);
  auto none = QuantizeLayer(w.data(), m, n, h.data(), SpqrConfig(kInf), 2);
  auto some = QuantizeLayer(w.data(), m, n, h.data(), SpqrConfig(0.2), 2);
  ASSERT_TRUE(none.ok() && some.ok());
  EXPECT_GT(some->num_outliers, 0);
  EXPECT_LT(some->hessian_error, none->hessian_error);
}

// The definition, computed the slow way: re-fit min-max on the other values for every k and sum
// the weighted errors in index order. The fast path must give the same doubles bit for bit
// (groups with repeated extremes, a constant group, widths 1 to 40, 2 to 8 bits).
TEST(LeaveOneOutTest, EqualsRefittingWithoutEachValueBitForBit) {
  std::mt19937 rng(21);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  std::uniform_real_distribution<float> diag(0.5f, 2.0f);
  for (int trial = 0; trial < 200; ++trial) {
    const int count = 1 + trial % 40, wbits = 2 + trial % 7, maxq = (1 << wbits) - 1;
    std::vector<float> v(count), d(count);
    for (int i = 0; i < count; ++i) {
      v[i] = trial % 17 == 0 ? 0.25f : normal(rng);
      d[i] = diag(rng);
    }
    if (count > 3 && trial % 3 == 0) {  // repeated extremes
      v[count - 1] = *std::max_element(v.begin(), v.end() - 1);
      v[count - 2] = *std::min_element(v.begin(), v.end() - 2);
    }
    auto error = [&](const ScaleZero& sz, int skip) {
      double err = 0.0;
      for (int i = 0; i < count; ++i) {
        if (i == skip) continue;
        const float q =
            sz.scale *
            (static_cast<float>(QuantizeToCode(v[i], sz.scale, sz.zero, maxq)) - sz.zero);
        const float e = (q - v[i]) / d[i];
        err += static_cast<double>(e) * e;
      }
      return err;
    };
    const double base = error(FitMinMax(v.data(), count, 1, maxq, FirstLevelStyle::kSpqr), -1);
    std::vector<double> reduction(count);
    LeaveOneOutErrorReduction(v.data(), d.data(), count, wbits, reduction.data());
    for (int k = 0; k < count; ++k) {
      double expected = base;
      if (count > 1) {
        std::vector<float> others;
        for (int i = 0; i < count; ++i) {
          if (i != k) others.push_back(v[i]);
        }
        expected =
            base - error(FitMinMax(others.data(), count - 1, 1, maxq, FirstLevelStyle::kSpqr), k);
      }
      EXPECT_EQ(reduction[k], expected) << "trial " << trial << " k " << k;
    }
  }
}

TEST(LeaveOneOutTest, PlantedOutlierIsTheOnlyCandidateAndLeavesTheFit) {
  std::mt19937 rng(8);
  std::normal_distribution<float> normal(0.0f, 0.01f);
  std::vector<float> v(16), d(16, 1.0f), cleaned(16);
  for (float& x : v) x = normal(rng);
  v[5] = 1.0f;  // one huge weight
  std::vector<double> reduction(16);
  LeaveOneOutErrorReduction(v.data(), d.data(), 16, 3, reduction.data());
  const int best =
      static_cast<int>(std::max_element(reduction.begin(), reduction.end()) - reduction.begin());
  EXPECT_EQ(best, 5);
  // Threshold between the planted weight's gain and every other weight's gain.
  double second = -1e30;
  for (int k = 0; k < 16; ++k) {
    if (k != 5) second = std::max(second, reduction[k]);
  }
  // Leaving any weight out also saves its own error, so the margin is a few times, not orders.
  ASSERT_GT(reduction[5], 3 * std::max(second, 1e-12));
  const double threshold = std::sqrt(reduction[5] * std::max(second, 1e-12));
  EXPECT_EQ(CleanGroupRowForFitting(v.data(), d.data(), 16, 3, threshold, cleaned.data()), 1);
  double mean = 0;
  for (int k = 0; k < 16; ++k) {
    if (k != 5) mean += v[k];
  }
  mean /= 15;
  EXPECT_NEAR(cleaned[5], mean, 1e-7);
  for (int k = 0; k < 16; ++k) {
    if (k != 5) EXPECT_EQ(cleaned[k], v[k]);
  }
  // The statistics fitted on the cleaned row ignore the huge weight.
  const ScaleZero sz = FitMinMax(cleaned.data(), 16, 1, 7, FirstLevelStyle::kSpqr);
  EXPECT_LT(sz.scale, 0.1f / 7);
}

TEST(SpqrLayerTest, PlantedOutlierIsKeptAndStatsIgnoreIt) {
  const int64_t m = 32, n = 32;
  auto w = testing::RandomWeights(m, n, 21);
  const int64_t row = 9, col = 13;
  w[row * n + col] = 0.8f;  // ~40 sigma
  const auto h = testing::CorrelatedHessian(n, 22);
  SpqrLayerConfig c = SpqrConfig(0.2);
  c.act_order = false;  // keep column 13 in group 0 at position 13
  auto res = QuantizeLayer(w.data(), m, n, h.data(), c, 1);
  ASSERT_TRUE(res.ok()) << res.status();
  const PackedSpqrLayer& l = res->packed;
  bool found = false;
  for (uint32_t k = l.outlier_row_offsets[row]; k < l.outlier_row_offsets[row + 1]; ++k) {
    found |= l.outlier_col(k) == col;
  }
  EXPECT_TRUE(found);
  // Reconstructed closely (fp16 residual on top of the chosen code).
  EXPECT_NEAR(res->dequantized[row * n + col], 0.8f, 0.8f * 1e-3f);
  // The group's scale reflects the ordinary weights, not the 0.8 one (which alone would need a
  // scale of > 0.8 / 7).
  const GroupStats st = DecodeGroupStats(l, row, col / 16);
  EXPECT_LT(st.scale, 0.05f);
}

TEST(SecondLevelTest, RoundTripAndConstantBlocks) {
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> uni(0.001f, 0.01f);
  const int64_t m = 23;
  const int beta2 = 7;
  std::vector<float> values(m);
  for (float& v : values) v = uni(rng);
  values[21] = values[22] = 0.004f;  // last block (rows 21, 22) constant
  std::vector<uint8_t> codes(m);
  std::vector<uint16_t> params(4 * 2);
  std::vector<float> decoded(m);
  QuantizeSecondLevel(values.data(), m, beta2, 3, codes.data(), params.data(), 2, decoded.data());
  for (int64_t r = 0; r < m; ++r) {
    const int64_t b = r / beta2;
    EXPECT_EQ(decoded[r], DequantSecondLevel(codes[r], params[2 * b], params[2 * b + 1]));
    const float step = F16ToF32(params[2 * b]);
    EXPECT_LE(std::fabs(decoded[r] - values[r]), 0.5f * step + 1e-5f) << r;
  }
  EXPECT_NEAR(decoded[21], 0.004f, 0.004f * 1e-3f);
  EXPECT_EQ(decoded[21], decoded[22]);
}

TEST(SpqrLayerTest, BilevelStatsAreWhatTheLoopUsed) {
  // The decoder's statistics reproduce the quantizer's weights for every configuration (bit for
  // bit, checked in spqr_format_test); here: stats differ from fp16 stats only by the 3-bit grid.
  const int64_t m = 40, n = 64;
  const auto w = testing::RandomWeights(m, n, 31);
  const auto h = testing::CorrelatedHessian(n, 32);
  SpqrLayerConfig c3 = SpqrConfig(kInf), c16 = SpqrConfig(kInf);
  c16.stats_bits = kFp16Stats;
  auto r3 = QuantizeLayer(w.data(), m, n, h.data(), c3, 2);
  auto r16 = QuantizeLayer(w.data(), m, n, h.data(), c16, 2);
  ASSERT_TRUE(r3.ok() && r16.ok());
  auto d3 = DequantizeSpqrLayer(r3->packed);
  ASSERT_TRUE(d3.ok());
  EXPECT_EQ(std::memcmp(d3->data(), r3->dequantized.data(), m * n * 4), 0);
  // 3-bit statistics cost accuracy but stay in the same range.
  EXPECT_GT(r3->hessian_error, r16->hessian_error * 0.9);
  EXPECT_LT(r3->relative_hessian_error, 0.2);
}

TEST(SpqrLayerTest, ActOrderPermutationIsConsistent) {
  const int64_t m = 24, n = 48;
  const auto w = testing::RandomWeights(m, n, 41);
  const auto h = testing::CorrelatedHessian(n, 42);
  SpqrLayerConfig c = SpqrConfig(0.2);
  c.wbits = 4;
  auto res = QuantizeLayer(w.data(), m, n, h.data(), c, 2);
  ASSERT_TRUE(res.ok()) << res.status();
  const auto& perm = res->packed.perm;
  // Descending diag(H).
  for (int64_t j = 1; j < n; ++j)
    EXPECT_GE(h[perm[j - 1] * n + perm[j - 1]], h[perm[j] * n + perm[j]]);
  EXPECT_FALSE(std::is_sorted(perm.begin(), perm.end()));
  // The dequantized matrix is in original column order: it approximates W column by column.
  double err = 0, norm = 0;
  for (int64_t i = 0; i < m * n; ++i) {
    err += (w[i] - res->dequantized[i]) * (w[i] - res->dequantized[i]);
    norm += w[i] * w[i];
  }
  EXPECT_LT(err / norm, 0.05);
  // A matvec on the packed layer (gathering x by the stored perm) equals W_hat @ x.
  const auto x = testing::RandomWeights(1, n, 43, 1.0f);
  std::vector<float> y(m);
  ASSERT_TRUE(SpqrMatmul(res->packed, x.data(), 1, y.data()).ok());
  for (int64_t r = 0; r < m; ++r) {
    double ref = 0, mag = 0;
    for (int64_t j = 0; j < n; ++j) {
      ref += static_cast<double>(res->dequantized[r * n + j]) * x[j];
      mag += std::fabs(res->dequantized[r * n + j] * x[j]);
    }
    EXPECT_NEAR(y[r], ref, 2.0 * n * std::ldexp(1.0, -24) * mag);
  }
}

TEST(SpqrLayerTest, DeadInputsAreCountedAndZeroed) {
  const int64_t m = 16, n = 32;
  const auto w = testing::RandomWeights(m, n, 51);
  auto h = testing::CorrelatedHessian(n, 52);
  for (int64_t j = 0; j < n; ++j) h[3 * n + j] = h[j * n + 3] = 0.0f;
  auto res = QuantizeLayer(w.data(), m, n, h.data(), SpqrConfig(0.2), 1);
  ASSERT_TRUE(res.ok()) << res.status();
  EXPECT_EQ(res->num_dead_inputs, 1);
  EXPECT_EQ(res->packed.perm.back(), 3u);  // diag 0 sorts last
  // The dead column was quantized as zeros: every row's value there is the decode of
  // quantize(0), never the original weight.
  for (int64_t r = 0; r < m; ++r) EXPECT_LT(std::fabs(res->dequantized[r * n + 3]), 0.05f);
}

TEST(SpqrLayerTest, DeterministicForSameThreadCount) {
  const int64_t m = 40, n = 64;
  const auto w = testing::RandomWeights(m, n, 61);
  const auto h = testing::CorrelatedHessian(n, 62);
  auto a = QuantizeLayer(w.data(), m, n, h.data(), SpqrConfig(0.2), 2);
  auto b = QuantizeLayer(w.data(), m, n, h.data(), SpqrConfig(0.2), 2);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->packed.weight_codes, b->packed.weight_codes);
  EXPECT_EQ(a->packed.outlier_values, b->packed.outlier_values);
  EXPECT_EQ(std::memcmp(a->dequantized.data(), b->dequantized.data(), m * n * 4), 0);
}

TEST(SpqrLayerTest, ARaisedStopCancelsAtTheNextColumnBlock) {
  const int64_t m = 16, n = 512;
  const auto w = testing::RandomWeights(m, n, 71);
  const auto h = testing::CorrelatedHessian(n, 72);
  std::atomic<int> stop{0};
  SpqrLayerConfig c = SpqrConfig(0.2);
  c.stop = &stop;
  EXPECT_TRUE(QuantizeLayer(w.data(), m, n, h.data(), c, 1).ok());
  stop = 15;
  auto res = QuantizeLayer(w.data(), m, n, h.data(), c, 1);
  ASSERT_FALSE(res.ok());
  EXPECT_EQ(res.status().code(), absl::StatusCode::kCancelled) << res.status();
  EXPECT_NE(res.status().message().find("signal 15"), std::string::npos) << res.status();
}

TEST(SpqrLayerTest, ValidationNamesParameterAndValue) {
  const int64_t m = 8, n = 48;
  const auto w = testing::RandomWeights(m, n, 1);
  const auto h = testing::CorrelatedHessian(n, 2);
  auto expect = [&](SpqrLayerConfig c, const std::string& needle) {
    auto res = QuantizeLayer(w.data(), m, n, h.data(), c, 1);
    ASSERT_FALSE(res.ok()) << needle;
    EXPECT_EQ(res.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(res.status().message().find(needle), std::string::npos) << res.status();
  };
  SpqrLayerConfig c = SpqrConfig(0.2);
  c.beta1 = 32;
  expect(c, "beta1=32 must divide the layer's input width 48");
  c = SpqrConfig(0.2);
  c.wbits = 9;
  expect(c, "wbits must be in 2..8, got 9");
  c = SpqrConfig(0.2);
  c.stats_bits = 2;
  expect(c, "stats_bits must be in 3..8 or 16, got 2");
  c = SpqrConfig(0.2);
  c.beta2 = 0;
  expect(c, "beta2 must be in 1..1048576, got 0");
  c = SpqrConfig(0.2);
  c.method = SpqrLayerConfig::Method::kGptq;
  expect(c, "applies to method spqr only");
  c = SpqrConfig(kInf);
  c.lambda = -1;
  expect(c, "lambda");
  // Non-finite weights.
  auto bad = w;
  bad[17] = std::nanf("");
  auto res = QuantizeLayer(bad.data(), m, n, h.data(), SpqrConfig(0.2), 1);
  ASSERT_FALSE(res.ok());
  EXPECT_NE(res.status().message().find("(0, 17)"), std::string::npos) << res.status();
}

}  // namespace
}  // namespace spqr
