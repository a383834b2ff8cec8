// RTN baseline: no Hessian, GPTQ-style min-max (0 in range, integer zero), fp16 or bilevel stats.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "engine/format/spqr_layer.h"
#include "gtest/gtest.h"
#include "quantizer/spqr_layer_quantizer.h"
#include "tests/unit/quantizer_test_util.h"

namespace spqr {
namespace {

SpqrLayerConfig Rtn(int wbits, int beta1, int stats_bits) {
  SpqrLayerConfig c;
  c.method = SpqrLayerConfig::Method::kRtn;
  c.act_order = false;
  c.wbits = wbits;
  c.beta1 = beta1;
  c.stats_bits = stats_bits;
  return c;
}

TEST(RtnTest, MatchesAnIndependentRoundToNearest) {
  const int64_t m = 12, n = 64;
  const auto w = testing::RandomWeights(m, n, 5);
  for (int beta1 : {0, 16}) {
    auto res = QuantizeLayer(w.data(), m, n, nullptr, Rtn(4, beta1, kFp16Stats), 1);
    ASSERT_TRUE(res.ok()) << res.status();
    EXPECT_TRUE(std::isnan(res->hessian_error));
    const int64_t group = beta1 == 0 ? n : beta1;
    for (int64_t r = 0; r < m; ++r) {
      for (int64_t g0 = 0; g0 < n; g0 += group) {
        float lo = 0, hi = 0;
        for (int64_t j = g0; j < g0 + group; ++j) {
          lo = std::min(lo, w[r * n + j]);
          hi = std::max(hi, w[r * n + j]);
        }
        const float scale = F16ToF32(F32ToF16((hi - lo) / 15));
        const float zero = std::nearbyint(-lo / ((hi - lo) / 15));
        for (int64_t j = g0; j < g0 + group; ++j) {
          const float q = std::clamp(std::nearbyint(w[r * n + j] / scale + zero), 0.0f, 15.0f);
          EXPECT_EQ(res->dequantized[r * n + j], scale * (q - zero)) << r << " " << j;
          EXPECT_LE(std::fabs(res->dequantized[r * n + j] - w[r * n + j]), 0.51f * scale + 1e-6f);
        }
      }
    }
    auto dense = DequantizeSpqrLayer(res->packed);
    ASSERT_TRUE(dense.ok());
    EXPECT_EQ(std::memcmp(dense->data(), res->dequantized.data(), m * n * 4), 0);
  }
}

TEST(RtnTest, BilevelStatisticsAndHessianErrorWhenGiven) {
  const int64_t m = 20, n = 32;
  const auto w = testing::RandomWeights(m, n, 6);
  const auto h = testing::CorrelatedHessian(n, 7);
  SpqrLayerConfig c = Rtn(3, 16, 3);
  c.beta2 = 7;
  auto res = QuantizeLayer(w.data(), m, n, h.data(), c, 2);
  ASSERT_TRUE(res.ok()) << res.status();
  EXPECT_GT(res->hessian_error, 0.0);
  auto dense = DequantizeSpqrLayer(res->packed);
  ASSERT_TRUE(dense.ok());
  EXPECT_EQ(std::memcmp(dense->data(), res->dequantized.data(), m * n * 4), 0);
}

TEST(RtnTest, RejectsActOrderAndOutliers) {
  const auto w = testing::RandomWeights(4, 16, 1);
  SpqrLayerConfig c = Rtn(4, 16, kFp16Stats);
  c.act_order = true;
  auto res = QuantizeLayer(w.data(), 4, 16, nullptr, c, 1);
  ASSERT_FALSE(res.ok());
  EXPECT_NE(res.status().message().find("act_order"), std::string::npos);
  c.act_order = false;
  c.tau = 0.1;
  res = QuantizeLayer(w.data(), 4, 16, nullptr, c, 1);
  ASSERT_FALSE(res.ok());
  EXPECT_NE(res.status().message().find("tau"), std::string::npos);
  SpqrLayerConfig g = c;
  g.method = SpqrLayerConfig::Method::kGptq;
  g.tau = std::numeric_limits<double>::infinity();
  res = QuantizeLayer(w.data(), 4, 16, nullptr, g, 1);
  ASSERT_FALSE(res.ok());
  EXPECT_NE(res.status().message().find("needs the layer's Hessian"), std::string::npos);
}

}  // namespace
}  // namespace spqr
