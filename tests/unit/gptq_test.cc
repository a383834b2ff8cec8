// GPTQ machinery: Hessian preparation, error compensation beats RTN, GPTQ-style statistics.
#include <Eigen/Dense>
#include <cmath>
#include <cstring>
#include <limits>

#include "engine/format/spqr_layer.h"
#include "gtest/gtest.h"
#include "quantizer/hessian.h"
#include "quantizer/spqr_layer_quantizer.h"
#include "tests/unit/quantizer_test_util.h"

namespace spqr {
namespace {

TEST(HessianTest, AccumulatorIsTwoOverNSumOfOuterProducts) {
  const int64_t n = 5, tokens = 7;
  const auto x = testing::CorrelatedInputs(tokens, n, 3);
  HessianAccumulator acc(n);
  acc.AddBatch(x.data(), 3);
  acc.AddBatch(x.data() + 3 * n, 4);
  EXPECT_EQ(acc.num_samples(), tokens);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double ref = 0;
      for (int64_t t = 0; t < tokens; ++t) ref += double(x[t * n + i]) * x[t * n + j];
      ref *= 2.0 / tokens;
      EXPECT_NEAR(acc.matrix()[i * n + j], ref, 1e-4 * (std::fabs(ref) + 1));
    }
  }
}

// AddBatches (panels of H over threads, used by QuantizeModel) is bit for bit the serial AddBatch
// sequence, for widths that are and are not multiples of its 64-row panels, and any thread count.
TEST(HessianTest, AddBatchesEqualsAddBatchSequenceBitForBit) {
  Eigen::setNbThreads(1);  // serial products, as QuantizeModel runs them
  for (const int64_t n : {int64_t{100}, int64_t{192}}) {
    const int64_t rows = 37, batches = 5;
    const auto x = testing::CorrelatedInputs(rows * batches, n, 11);
    HessianAccumulator serial(n);
    for (int64_t b = 0; b < batches; ++b) serial.AddBatch(x.data() + b * rows * n, rows);
    for (const int threads : {1, 2, 3}) {
      HessianAccumulator panels(n);
      // Two calls (3 then 2 batches), as chunks of windows arrive.
      std::vector<const float*> first, second;
      for (int64_t b = 0; b < batches; ++b) {
        (b < 3 ? first : second).push_back(x.data() + b * rows * n);
      }
      panels.AddBatches(first, rows, threads);
      panels.AddBatches(second, rows, threads);
      EXPECT_EQ(panels.num_samples(), serial.num_samples());
      ASSERT_EQ(panels.matrix().size(), serial.matrix().size());
      EXPECT_EQ(std::memcmp(panels.matrix().data(), serial.matrix().data(),
                            serial.matrix().size() * sizeof(float)),
                0)
          << "n=" << n << " threads=" << threads;
    }
  }
  Eigen::setNbThreads(0);
}

TEST(HessianTest, PreparedFactorIsUpperCholeskyOfDampedInverse) {
  const int64_t n = 24;
  const auto h = testing::CorrelatedHessian(n, 9);
  const double lambda = 0.1;
  auto prep = PrepareHessian(h.data(), n, lambda, /*act_order=*/true);
  ASSERT_TRUE(prep.ok()) << prep.status();
  Eigen::MatrixXd hp(n, n), u(n, n);
  double mean_diag = 0;
  for (int64_t j = 0; j < n; ++j) mean_diag += h[j * n + j];
  mean_diag /= n;
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      hp(i, j) = h[prep->perm[i] * n + prep->perm[j]] + (i == j ? lambda * mean_diag : 0.0);
      u(i, j) = prep->inv_chol[i * n + j];
      if (j < i) {
        EXPECT_EQ(u(i, j), 0.0);
      }
    }
    EXPECT_EQ(prep->inv_chol_diag[i], prep->inv_chol[i * n + i]);
  }
  const Eigen::MatrixXd should_be_identity = (u.transpose() * u) * hp;
  EXPECT_LT((should_be_identity - Eigen::MatrixXd::Identity(n, n)).cwiseAbs().maxCoeff(), 1e-3);
  for (int64_t j = 1; j < n; ++j) {
    EXPECT_GE(h[prep->perm[j - 1] * (n + 1)], h[prep->perm[j] * (n + 1)]);
  }
}

TEST(HessianTest, NotPositiveDefiniteIsAnError) {
  const int64_t n = 4;
  std::vector<float> h(n * n, 1.0f);  // rank 1, diag nonzero
  auto prep = PrepareHessian(h.data(), n, 0.0, false);
  ASSERT_FALSE(prep.ok());
  EXPECT_EQ(prep.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(prep.status().message().find("lambda"), std::string::npos);
}

SpqrLayerConfig Config(SpqrLayerConfig::Method method, int wbits, int beta1) {
  SpqrLayerConfig c;
  c.method = method;
  c.wbits = wbits;
  c.beta1 = beta1;
  c.stats_bits = kFp16Stats;
  c.lambda = 0.01;
  c.act_order = method != SpqrLayerConfig::Method::kRtn;
  return c;
}

TEST(GptqTest, HessianWeightedErrorBelowRtn) {
  const int64_t m = 64, n = 128;
  const auto w = testing::RandomWeights(m, n, 71);
  const auto h = testing::CorrelatedHessian(n, 72, 1024);
  for (int wbits : {2, 3, 4}) {
    for (int beta1 : {0, 32}) {
      auto rtn = QuantizeLayer(w.data(), m, n, h.data(),
                               Config(SpqrLayerConfig::Method::kRtn, wbits, beta1), 2);
      auto gptq = QuantizeLayer(w.data(), m, n, h.data(),
                                Config(SpqrLayerConfig::Method::kGptq, wbits, beta1), 2);
      ASSERT_TRUE(rtn.ok() && gptq.ok());
      EXPECT_LT(gptq->hessian_error, 0.8 * rtn->hessian_error)
          << "wbits " << wbits << " beta1 " << beta1;
    }
  }
}

TEST(GptqTest, SpqrBeatsGptqAtTheSameWidth) {
  const int64_t m = 64, n = 128;
  const auto w = testing::RandomWeights(m, n, 81);
  const auto h = testing::CorrelatedHessian(n, 82, 1024);
  SpqrLayerConfig gptq = Config(SpqrLayerConfig::Method::kGptq, 3, 0);
  gptq.lambda = 1.0;
  SpqrLayerConfig spqr;  // w3, 16/16, 3-bit stats, no outliers
  auto g = QuantizeLayer(w.data(), m, n, h.data(), gptq, 2);
  auto s = QuantizeLayer(w.data(), m, n, h.data(), spqr, 2);
  ASSERT_TRUE(g.ok() && s.ok());
  EXPECT_LT(s->hessian_error, g->hessian_error);
}

TEST(GptqTest, GptqStatisticsHaveIntegerZeroAndIncludeZero) {
  const int64_t m = 16, n = 64;
  auto w = testing::RandomWeights(m, n, 91);
  for (float& v : w) v = std::fabs(v) + 0.05f;  // all positive: SpQR's range would exclude 0
  const auto h = testing::CorrelatedHessian(n, 92);
  auto res =
      QuantizeLayer(w.data(), m, n, h.data(), Config(SpqrLayerConfig::Method::kGptq, 3, 16), 1);
  ASSERT_TRUE(res.ok());
  for (int64_t r = 0; r < m; ++r) {
    for (int64_t g = 0; g < n / 16; ++g) {
      const GroupStats st = DecodeGroupStats(res->packed, r, g);
      EXPECT_EQ(st.zero, std::nearbyint(st.zero));
      EXPECT_EQ(st.zero, 0.0f);  // range [0, max]
    }
  }
  // SpQR's first level does not force 0 into the range: its zero is negative and fractional.
  SpqrLayerConfig s = Config(SpqrLayerConfig::Method::kSpqr, 3, 16);
  auto sres = QuantizeLayer(w.data(), m, n, h.data(), s, 1);
  ASSERT_TRUE(sres.ok());
  const GroupStats st = DecodeGroupStats(sres->packed, 0, 0);
  EXPECT_LT(st.zero, 0.0f);
  EXPECT_LT(sres->hessian_error, res->hessian_error);
}

TEST(GptqTest, BlockSizeDoesNotChangeTheResultBeyondRounding) {
  const int64_t m = 32, n = 128;
  const auto w = testing::RandomWeights(m, n, 101);
  const auto h = testing::CorrelatedHessian(n, 102);
  SpqrLayerConfig a = Config(SpqrLayerConfig::Method::kGptq, 4, 16), b = a;
  b.block_size = 32;
  auto ra = QuantizeLayer(w.data(), m, n, h.data(), a, 1);
  auto rb = QuantizeLayer(w.data(), m, n, h.data(), b, 1);
  ASSERT_TRUE(ra.ok() && rb.ok());
  EXPECT_NEAR(ra->hessian_error, rb->hessian_error, 0.02 * ra->hessian_error);
}

}  // namespace
}  // namespace spqr
