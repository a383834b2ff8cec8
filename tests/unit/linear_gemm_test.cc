// The exact dense kernels (engine/backend/cpu/linear.h, linear_gemm.h) on odd shapes: cpu::Linear
// (row tiles for decode sizes, the K-blocked GEMM above them) and cpu::LinearBlocked at every
// token count equal the portable reference bit for bit, so a token's outputs cannot depend on the
// batch, the blocking or the thread count. Shapes cross the GEMM's row block (128), K-block (512)
// and token block (64), and none is a multiple of the vector width.
#include "engine/backend/cpu/linear_gemm.h"

#include <cstring>
#include <random>
#include <vector>

#include "engine/backend/cpu/linear.h"
#include "gtest/gtest.h"
#include "tests/unit/cpu_test_weights.h"

namespace spqr::cpu {
namespace {

using ::spqr::testing::MakeRandomTensor;
using ::spqr::testing::RandomTensor;

struct Shape {
  int64_t out, in;
  bool bias;
};

struct Layer {
  RandomTensor w, b;
  LinearTensors tensors;
};

Layer MakeLayer(DType dtype, const Shape& s, uint32_t seed) {
  std::mt19937 rng(seed);
  Layer l;
  l.w = MakeRandomTensor(dtype, s.out * s.in, 0.1f, &rng);
  l.b = MakeRandomTensor(dtype, s.out, 0.5f, &rng);
  l.tensors.weight.dtype = dtype;
  l.tensors.weight.shape = {s.out, s.in};
  l.tensors.weight.data = l.w.bytes.data();
  l.tensors.weight.nbytes = l.w.bytes.size();
  if (s.bias) {
    TensorView b;
    b.dtype = dtype;
    b.shape = {s.out};
    b.data = l.b.bytes.data();
    b.nbytes = l.b.bytes.size();
    l.tensors.bias = b;
  }
  l.tensors.out_features = s.out;
  l.tensors.in_features = s.in;
  return l;
}

PackedActivations Inputs(int64_t tokens, int64_t in, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(tokens * in));
  for (float& v : x) v = normal(rng);
  // Exact zeros of both signs: the padding FMAs must treat them as every other path does.
  if (!x.empty()) x[0] = -0.0f;
  if (x.size() > 1) x[1] = 0.0f;
  PackedActivations packed;
  PackActivations(x.data(), tokens, in, &packed);
  return packed;
}

enum class Kernel { kLinear, kBlocked, kReference };

std::vector<float> Multiply(const Layer& l, const PackedActivations& x, Kernel kernel,
                            int threads) {
  std::vector<float> y(static_cast<size_t>(x.num_tokens * l.tensors.out_features), -1.0f);
  switch (kernel) {
    case Kernel::kLinear:
      Linear(l.tensors, x, y.data(), threads);
      break;
    case Kernel::kBlocked:
      LinearBlocked(l.tensors, x, y.data(), threads);
      break;
    case Kernel::kReference:
      LinearExactReference(l.tensors, x, y.data());
      break;
  }
  return y;
}

void ExpectSameBits(const std::vector<float>& got, const std::vector<float>& want,
                    const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < want.size(); ++i) {
    ASSERT_EQ(std::memcmp(&got[i], &want[i], sizeof(float)), 0)
        << what << " element " << i << ": " << got[i] << " vs " << want[i];
  }
}

class LinearGemmTest : public ::testing::TestWithParam<std::tuple<DType, Shape>> {};

TEST_P(LinearGemmTest, EveryTokenCountEqualsTheReferenceBitForBit) {
  const auto [dtype, s] = GetParam();
  const Layer l = MakeLayer(dtype, s, 1);
  for (int64_t tokens = 1; tokens <= 37; ++tokens) {
    const PackedActivations x = Inputs(tokens, s.in, static_cast<uint32_t>(tokens));
    const std::vector<float> want = Multiply(l, x, Kernel::kReference, 1);
    const std::string what = "tokens " + std::to_string(tokens);
    ExpectSameBits(Multiply(l, x, Kernel::kLinear, 2), want, "Linear " + what);
    ExpectSameBits(Multiply(l, x, Kernel::kBlocked, 2), want, "LinearBlocked " + what);
  }
}

TEST_P(LinearGemmTest, ATokenDoesNotDependOnTheBatchOrThreads) {
  const auto [dtype, s] = GetParam();
  const Layer l = MakeLayer(dtype, s, 2);
  const int64_t tokens = 70;  // more than one token block
  const PackedActivations all = Inputs(tokens, s.in, 3);
  const std::vector<float> y_all = Multiply(l, all, Kernel::kLinear, 2);
  for (int64_t t : {0, 5, 63, 64, 69}) {
    PackedActivations one;
    PackActivations(all.data.data() + t * all.stride, 1, s.in, &one);
    const std::vector<float> want(y_all.begin() + t * s.out, y_all.begin() + (t + 1) * s.out);
    for (int threads : {1, 3}) {
      const std::string what = "token " + std::to_string(t) + " threads " + std::to_string(threads);
      ExpectSameBits(Multiply(l, one, Kernel::kLinear, threads), want, "Linear " + what);
      ExpectSameBits(Multiply(l, one, Kernel::kBlocked, threads), want, "LinearBlocked " + what);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    OddShapes, LinearGemmTest,
    ::testing::Combine(::testing::Values(DType::kBF16, DType::kF16, DType::kF32),
                       ::testing::Values(Shape{5, 17, false}, Shape{37, 100, true},
                                         Shape{131, 531, false}, Shape{9, 1043, true})));

}  // namespace
}  // namespace spqr::cpu
