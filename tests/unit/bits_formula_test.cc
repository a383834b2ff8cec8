#include <cmath>
#include <limits>

#include "engine/format/bit_packing.h"
#include "engine/format/spqr_layer.h"
#include "gtest/gtest.h"
#include "quantizer/spqr_layer_quantizer.h"
#include "tests/unit/quantizer_test_util.h"

namespace spqr {
namespace {

TEST(BitsFormulaTest, PaperExamples) {
  EXPECT_DOUBLE_EQ(SpqrFormulaBitsPerParameter(3, 16, 16, 3, 0.0), 3.625);
  EXPECT_DOUBLE_EQ(SpqrFormulaBitsPerParameter(4, 16, 16, 3, 0.0), 4.625);
  EXPECT_DOUBLE_EQ(SpqrFormulaBitsPerParameter(3, 8, 64, 3, 0.0), 3.875);
}

TEST(BitsFormulaTest, OutliersCost32BitsEach) {
  EXPECT_DOUBLE_EQ(SpqrFormulaBitsPerParameter(4, 16, 16, 3, 0.01), 4.625 + 0.32);
}

TEST(BitsFormulaTest, Fp16StatisticsHaveNoSecondLevel) {
  // w4, group 128, fp16 scale + zero: 4 + 32/128.
  EXPECT_DOUBLE_EQ(SpqrFormulaBitsPerParameter(4, 128, 16, kFp16Stats, 0.0), 4.25);
}

TEST(BitsFormulaTest, RealBytesCountEveryArray) {
  const int64_t m = 32, n = 64;
  const auto w = testing::RandomWeights(m, n, 1);
  const auto h = testing::CorrelatedHessian(n, 2);
  SpqrLayerConfig c;
  c.wbits = 3;
  c.beta1 = 16;
  c.beta2 = 16;
  c.stats_bits = 3;
  c.tau = 0.1;
  auto res = QuantizeLayer(w.data(), m, n, h.data(), c, 1);
  ASSERT_TRUE(res.ok()) << res.status();
  const PackedSpqrLayer& l = res->packed;
  const int64_t nnz = l.num_outliers();
  ASSERT_GT(nnz, 0);
  const int64_t expected = m * BitRowWords(n, 3) * 4             // weight codes
                           + 2 * m * BitRowWords(n / 16, 3) * 4  // scale + zero codes
                           + (m / 16) * (n / 16) * 4 * 2         // second-level fp16
                           + (m + 1) * 4 + nnz * (2 + 2)         // CSR
                           + n * 4;                              // permutation
  EXPECT_EQ(SpqrLayerPayloadBytes(l), expected);
  EXPECT_DOUBLE_EQ(SpqrRealBitsPerParameter(l), 8.0 * expected / (m * n));
  EXPECT_DOUBLE_EQ(res->formula_bits, 3.625 + 32.0 * nnz / (m * n));
  // Small layers pay for row offsets, the permutation and per-row word padding.
  EXPECT_GT(res->real_bits, res->formula_bits);
}

}  // namespace
}  // namespace spqr
