// Each CPU backend op against a naive double-precision scalar reference, on odd shapes and the
// three weight dtypes.
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "engine/backend/cpu/attention.h"
#include "engine/backend/cpu/embedding.h"
#include "engine/backend/cpu/linear.h"
#include "engine/backend/cpu/paged_kv_pool.h"
#include "engine/backend/cpu/rms_norm.h"
#include "engine/backend/cpu/rope.h"
#include "engine/backend/cpu/simd.h"
#include "engine/backend/cpu/swiglu.h"
#include "gtest/gtest.h"
#include "tests/unit/cpu_test_weights.h"

namespace spqr::cpu {
namespace {

using ::spqr::testing::MakeRandomTensor;
using ::spqr::testing::RandomTensor;

std::vector<float> RandomFloats(int64_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

TensorView View(const RandomTensor& t, DType dtype, std::vector<int64_t> shape) {
  TensorView v;
  v.name = "test";
  v.dtype = dtype;
  v.shape = std::move(shape);
  v.data = t.bytes.data();
  v.nbytes = t.bytes.size();
  return v;
}

// |a - b| <= tol * max(1, |b|): relative for large values, absolute near zero.
void ExpectClose(const std::vector<float>& got, const std::vector<double>& want, double tol) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_NEAR(got[i], want[i], tol * std::max(1.0, std::abs(want[i]))) << "at index " << i;
  }
}

class DTypeTest : public ::testing::TestWithParam<DType> {};
INSTANTIATE_TEST_SUITE_P(AllDTypes, DTypeTest,
                         ::testing::Values(DType::kF32, DType::kF16, DType::kBF16),
                         [](const auto& info) { return std::string(DTypeName(info.param)); });

TEST(CpuSimdTest, HalfConversionsMatchScalarForEveryBitPattern) {
  std::vector<uint16_t> all(65536);
  for (int i = 0; i < 65536; ++i) all[i] = static_cast<uint16_t>(i);
  std::vector<float> f16(65536), bf16(65536);
  F16ToF32Row(all.data(), f16.data(), 65536);
  Bf16ToF32Row(all.data(), bf16.data(), 65536);
  for (int i = 0; i < 65536; ++i) {
    const float a = F16ToF32(all[i]);
    const float b = Bf16ToF32(all[i]);
    // F16C quiets signalling NaNs: for NaNs only NaN-ness must survive.
    if (std::isnan(a)) {
      ASSERT_TRUE(std::isnan(f16[i])) << "f16 bits " << i;
    } else {
      ASSERT_EQ(std::memcmp(&f16[i], &a, 4), 0) << "f16 bits " << i;
    }
    ASSERT_EQ(std::memcmp(&bf16[i], &b, 4), 0) << "bf16 bits " << i;
  }
  // Odd length and offset exercise the scalar tail.
  std::vector<float> tail(37);
  ConvertToF32(DType::kBF16, all.data(), 1000, 37, tail.data());
  for (int i = 0; i < 37; ++i) EXPECT_EQ(tail[i], Bf16ToF32(static_cast<uint16_t>(1000 + i)));
}

TEST(CpuSimdTest, DotMatchesNaiveOnOddLengths) {
  for (int64_t n : {1, 7, 16, 33, 100}) {
    std::vector<float> a = RandomFloats(n, 1), b = RandomFloats(n, 2);
    double want = 0;
    for (int64_t i = 0; i < n; ++i) want += static_cast<double>(a[i]) * b[i];
    EXPECT_NEAR(DotF32(a.data(), b.data(), n), want, 1e-5 * std::max(1.0, std::abs(want)));
  }
}

TEST_P(DTypeTest, RmsNormMatchesNaive) {
  const DType dtype = GetParam();
  const int64_t tokens = 5, hidden = 96;
  std::mt19937 rng(7);
  RandomTensor w = MakeRandomTensor(dtype, hidden, 1.0f, &rng);
  std::vector<float> x = RandomFloats(tokens * hidden, 3, 2.0f);
  std::vector<float> out(tokens * hidden);
  const float eps = 1e-5f;
  RmsNorm(x.data(), tokens, hidden, View(w, dtype, {hidden}), eps, out.data(), 2);
  std::vector<double> want(tokens * hidden);
  for (int64_t t = 0; t < tokens; ++t) {
    double ss = 0;
    for (int64_t i = 0; i < hidden; ++i)
      ss += static_cast<double>(x[t * hidden + i]) * x[t * hidden + i];
    const double inv = 1.0 / std::sqrt(ss / hidden + eps);
    for (int64_t i = 0; i < hidden; ++i)
      want[t * hidden + i] = x[t * hidden + i] * inv * w.values[i];
  }
  ExpectClose(out, want, 1e-5);
}

// Naive y = W x + b in double, W given by its exact fp32 values.
std::vector<double> NaiveLinear(const std::vector<float>& w, const std::vector<float>* b,
                                const std::vector<float>& x, int64_t tokens, int64_t out,
                                int64_t in) {
  std::vector<double> y(tokens * out);
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t o = 0; o < out; ++o) {
      double s = b ? (*b)[o] : 0.0;
      for (int64_t k = 0; k < in; ++k) s += static_cast<double>(w[o * in + k]) * x[t * in + k];
      y[t * out + o] = s;
    }
  return y;
}

TEST_P(DTypeTest, LinearMatchesNaiveWithAndWithoutBias) {
  const DType dtype = GetParam();
  const int64_t out = 77, in = 100;  // neither a multiple of the row tile nor of the vector width
  std::mt19937 rng(11);
  RandomTensor w = MakeRandomTensor(dtype, out * in, 0.1f, &rng);
  RandomTensor b = MakeRandomTensor(dtype, out, 0.5f, &rng);
  for (bool with_bias : {false, true}) {
    for (int64_t tokens : {1, 2, 5, 9}) {
      LinearTensors layer;
      layer.weight = View(w, dtype, {out, in});
      if (with_bias) layer.bias = View(b, dtype, {out});
      layer.out_features = out;
      layer.in_features = in;
      std::vector<float> x = RandomFloats(tokens * in, 5);
      PackedActivations packed;
      PackActivations(x.data(), tokens, in, &packed);
      std::vector<float> y(tokens * out);
      Linear(layer, packed, y.data(), 2);
      ExpectClose(y, NaiveLinear(w.values, with_bias ? &b.values : nullptr, x, tokens, out, in),
                  1e-5);
    }
  }
}

TEST_P(DTypeTest, LinearRowOfATokenIsBitIdenticalWhateverTheBatch) {
  const DType dtype = GetParam();
  const int64_t out = 45, in = 67, tokens = 7;
  std::mt19937 rng(12);
  RandomTensor w = MakeRandomTensor(dtype, out * in, 0.1f, &rng);
  LinearTensors layer;
  layer.weight = View(w, dtype, {out, in});
  layer.out_features = out;
  layer.in_features = in;
  std::vector<float> x = RandomFloats(tokens * in, 6);
  PackedActivations packed;
  PackActivations(x.data(), tokens, in, &packed);
  std::vector<float> all(tokens * out);
  Linear(layer, packed, all.data(), 2);
  for (int64_t t = 0; t < tokens; ++t) {
    for (int threads : {1, 2, 3}) {
      PackActivations(x.data() + t * in, 1, in, &packed);
      std::vector<float> one(out);
      Linear(layer, packed, one.data(), threads);
      EXPECT_EQ(std::memcmp(one.data(), all.data() + t * out, out * sizeof(float)), 0)
          << "token " << t << " threads " << threads;
    }
  }
}

TEST(CpuRopeTest, DefaultInvFreqMatchesFormula) {
  RopeScaling none;
  std::vector<float> f = ComputeRopeInvFreq(32, 10000.0, none);
  ASSERT_EQ(f.size(), 16u);
  for (int i = 0; i < 16; ++i) EXPECT_NEAR(f[i], std::pow(10000.0, -2.0 * i / 32), 1e-6 * f[i]);
  RopeScaling linear;
  linear.type = RopeScaling::Type::kLinear;
  linear.factor = 4.0;
  std::vector<float> fl = ComputeRopeInvFreq(32, 10000.0, linear);
  for (int i = 0; i < 16; ++i) EXPECT_NEAR(fl[i], f[i] / 4.0, 1e-6 * fl[i]);
}

TEST(CpuRopeTest, Llama3ScalingKeepsHighFrequenciesAndDividesLowOnes) {
  RopeScaling s;
  s.type = RopeScaling::Type::kLlama3;
  s.factor = 8.0;
  s.low_freq_factor = 1.0;
  s.high_freq_factor = 4.0;
  s.original_max_position_embeddings = 64;  // small so all three bands appear at head_dim 32
  std::vector<float> base = ComputeRopeInvFreq(32, 10000.0, RopeScaling{});
  std::vector<float> f = ComputeRopeInvFreq(32, 10000.0, s);
  int high = 0, low = 0, medium = 0;
  for (int i = 0; i < 16; ++i) {
    const double wavelen = 2 * M_PI / base[i];
    double want;
    if (wavelen < 64.0 / 4.0) {
      want = base[i];
      ++high;
    } else if (wavelen > 64.0 / 1.0) {
      want = base[i] / 8.0;
      ++low;
    } else {
      const double smooth = (64.0 / wavelen - 1.0) / (4.0 - 1.0);
      want = (1 - smooth) * base[i] / 8.0 + smooth * base[i];
      ++medium;
    }
    EXPECT_NEAR(f[i], want, 1e-6 * want) << i;
  }
  EXPECT_GT(high, 0);
  EXPECT_GT(low, 0);
  EXPECT_GT(medium, 0);
}

TEST(CpuRopeTest, ApplyRopeMatchesRotateHalf) {
  const int64_t hd = 32, q_heads = 3, k_heads = 1, pos = 37;
  std::vector<float> inv = ComputeRopeInvFreq(hd, 500000.0, RopeScaling{});
  std::vector<float> q = RandomFloats(q_heads * hd, 8), k = RandomFloats(k_heads * hd, 9);
  std::vector<float> q0 = q, k0 = k;
  ApplyRope(q.data(), q_heads, k.data(), k_heads, hd, pos, inv.data());
  auto naive = [&](const std::vector<float>& x, int64_t heads) {
    std::vector<double> y(x.size());
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t i = 0; i < hd; ++i) {
        const int64_t j = i % (hd / 2);
        const double angle = static_cast<double>(static_cast<float>(pos) * inv[j]);
        const double rot = i < hd / 2 ? -x[h * hd + i + hd / 2] : x[h * hd + i - hd / 2];
        y[h * hd + i] = x[h * hd + i] * std::cos(angle) + rot * std::sin(angle);
      }
    return y;
  };
  ExpectClose(q, naive(q0, q_heads), 1e-6);
  ExpectClose(k, naive(k0, k_heads), 1e-6);
}

TEST(CpuAttentionTest, PagedGqaMatchesNaiveCausalAttention) {
  const AttentionShape shape{4, 2, 32};
  const int64_t bs = 4, layers = 2, layer = 1;
  PagedKvPool pool(layers, shape.kv_heads, shape.head_dim, /*num_blocks=*/9, bs);
  // Sequence A: positions [0, 5) cached, 3 new tokens. Sequence B: 2 new tokens from 0.
  const std::vector<int32_t> table_a = {7, 2, 5};
  const std::vector<int32_t> table_b = {0};
  const int64_t kv_floats = shape.kv_heads * shape.head_dim;
  const int64_t q_floats = shape.num_heads * shape.head_dim;
  std::vector<float> cached_k = RandomFloats(5 * kv_floats, 20),
                     cached_v = RandomFloats(5 * kv_floats, 21);
  const AttentionSequence prefix[] = {{0, 5, 0, table_a.data()}};
  StoreKv(cached_k.data(), cached_v.data(), prefix, shape, layer, &pool);

  const AttentionSequence seqs[] = {{0, 3, 5, table_a.data()}, {3, 2, 0, table_b.data()}};
  std::vector<float> k = RandomFloats(5 * kv_floats, 22), v = RandomFloats(5 * kv_floats, 23);
  std::vector<float> q = RandomFloats(5 * q_floats, 24);
  StoreKv(k.data(), v.data(), seqs, shape, layer, &pool);
  std::vector<float> out(5 * q_floats);
  PagedAttention(q.data(), seqs, shape, layer, pool, out.data(), 2);
  // With 8 threads the work is split per query head instead of per GQA group: same bits.
  std::vector<float> out_split(5 * q_floats);
  PagedAttention(q.data(), seqs, shape, layer, pool, out_split.data(), 8);
  EXPECT_EQ(std::memcmp(out.data(), out_split.data(), out.size() * sizeof(float)), 0);

  // Naive: contiguous K/V per sequence.
  std::vector<float> ka = cached_k, va = cached_v;
  ka.insert(ka.end(), k.begin(), k.begin() + 3 * kv_floats);
  va.insert(va.end(), v.begin(), v.begin() + 3 * kv_floats);
  std::vector<float> kb(k.begin() + 3 * kv_floats, k.end()), vb(v.begin() + 3 * kv_floats, v.end());
  std::vector<double> want(5 * q_floats);
  auto attend = [&](int64_t row, int64_t pos, const std::vector<float>& ks,
                    const std::vector<float>& vs) {
    for (int64_t h = 0; h < shape.num_heads; ++h) {
      const int64_t kvh = h / (shape.num_heads / shape.kv_heads);
      std::vector<double> s(pos + 1);
      double mx = -1e300;
      for (int64_t j = 0; j <= pos; ++j) {
        double d = 0;
        for (int64_t i = 0; i < shape.head_dim; ++i)
          d += static_cast<double>(q[row * q_floats + h * shape.head_dim + i]) *
               ks[j * kv_floats + kvh * shape.head_dim + i];
        s[j] = d / std::sqrt(static_cast<double>(shape.head_dim));
        mx = std::max(mx, s[j]);
      }
      double sum = 0;
      for (double& x : s) sum += (x = std::exp(x - mx));
      for (int64_t i = 0; i < shape.head_dim; ++i) {
        double o = 0;
        for (int64_t j = 0; j <= pos; ++j)
          o += s[j] / sum * vs[j * kv_floats + kvh * shape.head_dim + i];
        want[row * q_floats + h * shape.head_dim + i] = o;
      }
    }
  };
  for (int64_t i = 0; i < 3; ++i) attend(i, 5 + i, ka, va);
  for (int64_t i = 0; i < 2; ++i) attend(3 + i, i, kb, vb);
  ExpectClose(out, want, 1e-5);
}

TEST(CpuSwiGluTest, MatchesNaive) {
  const int64_t n = 1003;
  std::vector<float> g = RandomFloats(n, 30, 3.0f), u = RandomFloats(n, 31);
  std::vector<float> out(n);
  SwiGlu(g.data(), u.data(), n, out.data(), 2);
  std::vector<double> want(n);
  for (int64_t i = 0; i < n; ++i)
    want[i] = g[i] / (1.0 + std::exp(-static_cast<double>(g[i]))) * u[i];
  ExpectClose(out, want, 1e-6);
}

TEST_P(DTypeTest, EmbeddingLookupCopiesExactRows) {
  const DType dtype = GetParam();
  const int64_t vocab = 13, hidden = 96;
  std::mt19937 rng(40);
  RandomTensor table = MakeRandomTensor(dtype, vocab * hidden, 1.0f, &rng);
  const std::vector<int32_t> ids = {12, 0, 5, 5, 7};
  std::vector<float> out(ids.size() * hidden);
  EmbeddingLookup(View(table, dtype, {vocab, hidden}), ids, hidden, out.data());
  for (size_t i = 0; i < ids.size(); ++i)
    for (int64_t j = 0; j < hidden; ++j)
      ASSERT_EQ(out[i * hidden + j], table.values[ids[i] * hidden + j]);
}

}  // namespace
}  // namespace spqr::cpu
