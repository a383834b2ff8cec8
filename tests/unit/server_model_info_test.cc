// Tests of server/model_info: GetModelInfo's quantization message carries every field of the
// loaded model's QuantizationInfo.
#include <limits>

#include "gtest/gtest.h"
#include "server/model_info.h"

namespace spqr {
namespace {

TEST(FillQuantizationTest, CopiesEverySpqrField) {
  QuantizationInfo info;
  info.method = "spqr";
  info.weight_dtype = "f16";
  info.format_version = 2;
  info.bits_per_param_formula = 3.35;
  info.bits_per_param_real = 3.61;
  info.wbits = 3;
  info.beta1 = 16;
  info.beta2 = 16;
  info.stats_bits = 3;
  info.outlier_share = 0.0123;
  info.tau = 0.2;
  info.lambda = 0.01;
  info.act_order = true;
  info.quantizer_version = "spqr-quantize 0.1";
  info.calibration = "file=calib.txt, nsamples=128, seqlen=512, seed=0";
  v1::Quantization q;
  q.set_method("stale");
  FillQuantization(info, &q);
  EXPECT_EQ(q.method(), "spqr");
  EXPECT_EQ(q.weight_dtype(), "f16");
  EXPECT_EQ(q.format_version(), 2);
  EXPECT_DOUBLE_EQ(q.bits_per_param_formula(), 3.35);
  EXPECT_DOUBLE_EQ(q.bits_per_param_real(), 3.61);
  EXPECT_EQ(q.wbits(), 3);
  EXPECT_EQ(q.beta1(), 16);
  EXPECT_EQ(q.beta2(), 16);
  EXPECT_EQ(q.stats_bits(), 3);
  EXPECT_DOUBLE_EQ(q.outlier_share(), 0.0123);
  EXPECT_DOUBLE_EQ(q.tau(), 0.2);
  EXPECT_DOUBLE_EQ(q.hessian_damping(), 0.01);
  EXPECT_TRUE(q.act_order());
  EXPECT_EQ(q.quantizer_version(), "spqr-quantize 0.1");
  EXPECT_EQ(q.calibration(), "file=calib.txt, nsamples=128, seqlen=512, seed=0");
}

TEST(FillQuantizationTest, DenseModelHasOnlyMethodAndDtype) {
  QuantizationInfo info;  // what LoadModel reports for a dense checkpoint
  info.weight_dtype = "bf16";
  v1::Quantization q;
  q.set_wbits(4);
  q.set_calibration("stale");
  FillQuantization(info, &q);
  EXPECT_EQ(q.method(), "none");
  EXPECT_EQ(q.weight_dtype(), "bf16");
  v1::Quantization expected;
  expected.set_method("none");
  expected.set_weight_dtype("bf16");
  EXPECT_EQ(q.SerializeAsString(), expected.SerializeAsString()) << q.DebugString();
}

TEST(FillQuantizationTest, NoOutliersIsInfiniteTau) {
  QuantizationInfo info;
  info.method = "spqr";
  info.tau = std::numeric_limits<double>::infinity();
  v1::Quantization q;
  FillQuantization(info, &q);
  EXPECT_EQ(q.tau(), std::numeric_limits<double>::infinity());
}

}  // namespace
}  // namespace spqr
