// The dense bf16 dot-product kernel (engine/backend/cpu/linear_bf16.h) on odd shapes: equal bit for
// bit to its portable reference (the documented VDPBF16PS arithmetic), a token's row independent
// of the batch and the thread count, and within the bound that rounding the activations to bf16
// allows of the exact fp32 product.
#include "engine/backend/cpu/linear_bf16.h"

#include <cmath>
#include <random>
#include <vector>

#include "engine/backend/cpu/linear.h"
#include "gtest/gtest.h"
#include "tests/unit/cpu_test_weights.h"

namespace spqr::cpu {
namespace {

using ::spqr::testing::MakeRandomTensor;
using ::spqr::testing::RandomTensor;

struct Layer {
  RandomTensor w, b;
  LinearTensors tensors;
};

Layer MakeLayer(int64_t out, int64_t in, bool bias, uint32_t seed) {
  std::mt19937 rng(seed);
  Layer l;
  l.w = MakeRandomTensor(DType::kBF16, out * in, 0.1f, &rng);
  l.b = MakeRandomTensor(DType::kBF16, out, 0.5f, &rng);
  l.tensors.weight.dtype = DType::kBF16;
  l.tensors.weight.shape = {out, in};
  l.tensors.weight.data = l.w.bytes.data();
  l.tensors.weight.nbytes = l.w.bytes.size();
  if (bias) {
    TensorView b;
    b.dtype = DType::kBF16;
    b.shape = {out};
    b.data = l.b.bytes.data();
    b.nbytes = l.b.bytes.size();
    l.tensors.bias = b;
  }
  l.tensors.out_features = out;
  l.tensors.in_features = in;
  return l;
}

std::vector<float> Inputs(int64_t tokens, int64_t in, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(tokens * in));
  for (float& v : x) v = normal(rng);
  return x;
}

std::vector<float> Multiply(const Layer& l, const std::vector<float>& x, int64_t tokens,
                            int threads, bool reference) {
  PackedActivations packed;
  PackActivations(x.data(), tokens, l.tensors.in_features, &packed);
  std::vector<float> y(static_cast<size_t>(tokens * l.tensors.out_features));
  if (reference) {
    LinearBf16Reference(l.tensors, packed, y.data());
  } else {
    LinearBf16(l.tensors, packed, y.data(), threads);
  }
  return y;
}

struct Shape {
  int64_t out, in;
  bool bias;
};

class LinearBf16Test : public ::testing::TestWithParam<Shape> {
 protected:
  void SetUp() override {
    if (!Bf16DotSupported()) GTEST_SKIP() << "no AVX512-BF16 on this CPU";
  }
};

TEST_P(LinearBf16Test, EqualsTheReferenceBitForBit) {
  const Shape s = GetParam();
  const Layer l = MakeLayer(s.out, s.in, s.bias, 1);
  for (int64_t tokens : {1, 2, 3, 4, 5, 6, 7, 13}) {
    const std::vector<float> x = Inputs(tokens, s.in, 2);
    const std::vector<float> want = Multiply(l, x, tokens, 1, true);
    const std::vector<float> got = Multiply(l, x, tokens, 2, false);
    for (size_t i = 0; i < want.size(); ++i) ASSERT_EQ(got[i], want[i]) << "tokens " << tokens;
  }
}

TEST_P(LinearBf16Test, TokensDoNotDependOnTheBatchOrThreads) {
  const Shape s = GetParam();
  const Layer l = MakeLayer(s.out, s.in, s.bias, 3);
  const int64_t tokens = 11;
  const std::vector<float> x = Inputs(tokens, s.in, 4);
  const std::vector<float> all = Multiply(l, x, tokens, 2, false);
  for (int64_t t = 0; t < tokens; ++t) {
    const std::vector<float> one(x.begin() + t * s.in, x.begin() + (t + 1) * s.in);
    const std::vector<float> y = Multiply(l, one, 1, 1 + static_cast<int>(t % 2), false);
    for (int64_t r = 0; r < s.out; ++r) ASSERT_EQ(y[r], all[t * s.out + r]) << "token " << t;
  }
}

// Rounding x to bf16 moves each input by at most 2^-9 |x|: |y - y_exact| <= 2^-9 sum|w x| plus
// fp32 rounding of the sums.
TEST_P(LinearBf16Test, WithinTheActivationRoundingBoundOfTheExactProduct) {
  const Shape s = GetParam();
  const Layer l = MakeLayer(s.out, s.in, s.bias, 5);
  const int64_t tokens = 3;
  const std::vector<float> x = Inputs(tokens, s.in, 6);
  const std::vector<float> got = Multiply(l, x, tokens, 2, false);
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t r = 0; r < s.out; ++r) {
      double exact = s.bias ? l.b.values[r] : 0.0, magnitude = 0.0;
      for (int64_t k = 0; k < s.in; ++k) {
        const double p = static_cast<double>(l.w.values[r * s.in + k]) * x[t * s.in + k];
        exact += p;
        magnitude += std::fabs(p);
      }
      const double bound = magnitude * (std::ldexp(1.0, -9) + 1e-6) + 1e-6;
      ASSERT_LE(std::fabs(got[t * s.out + r] - exact), bound) << "row " << r << " token " << t;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, LinearBf16Test,
                         ::testing::Values(Shape{77, 100, true}, Shape{13, 64, false},
                                           Shape{130, 37, true}, Shape{5, 2048, false},
                                           Shape{64, 1, false}));

}  // namespace
}  // namespace spqr::cpu
