// BlockForward's GEMM attention against a scalar reference block written here, and
// EvaluatePerplexity's independence of the thread count.
#include "quantizer/block_forward.h"

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "engine/backend/cpu/rope.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "quantizer/perplexity.h"

namespace spqr {
namespace {

std::vector<float> Gaussian(int64_t n, std::mt19937* rng, float stddev) {
  std::normal_distribution<float> dist(0.0f, stddev);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = dist(*rng);
  return v;
}

ModelConfig SmallGqaConfig() {
  ModelConfig c;
  c.model_type = "llama";
  c.hidden_size = 48;
  c.intermediate_size = 80;
  c.num_attention_heads = 6;
  c.num_key_value_heads = 2;  // 3 query heads per KV head
  c.head_dim = 16;            // heads * head_dim != hidden: the projections are not square
  c.rms_norm_eps = 1e-5;
  c.rope_theta = 10000.0;
  return c;
}

DenseBlock RandomBlock(const ModelConfig& c, uint32_t seed, bool qkv_bias) {
  std::mt19937 rng(seed);
  const int64_t q_dim = c.num_attention_heads * c.head_dim;
  const int64_t kv_dim = c.num_key_value_heads * c.head_dim;
  const int64_t shapes[7][2] = {{q_dim, c.hidden_size},
                                {kv_dim, c.hidden_size},
                                {kv_dim, c.hidden_size},
                                {c.hidden_size, q_dim},
                                {c.intermediate_size, c.hidden_size},
                                {c.intermediate_size, c.hidden_size},
                                {c.hidden_size, c.intermediate_size}};
  DenseBlock b;
  b.input_norm = Gaussian(c.hidden_size, &rng, 0.2f);
  b.post_norm = Gaussian(c.hidden_size, &rng, 0.2f);
  for (float& w : b.input_norm) w += 1.0f;
  for (float& w : b.post_norm) w += 1.0f;
  for (int i = 0; i < 7; ++i) {
    DenseLinear& l = b.linears[i];
    l.out_features = shapes[i][0];
    l.in_features = shapes[i][1];
    // Large enough q/k weights that the softmax is far from uniform.
    l.weight = Gaussian(l.out_features * l.in_features, &rng, i < 2 ? 0.4f : 0.15f);
    if (qkv_bias && i < 3) l.bias = Gaussian(l.out_features, &rng, 0.1f);
  }
  return b;
}

// y = x W^T + b, in double.
std::vector<double> RefLinear(const DenseLinear& l, const std::vector<double>& x, int64_t tokens) {
  std::vector<double> y(static_cast<size_t>(tokens * l.out_features));
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t o = 0; o < l.out_features; ++o) {
      double acc = l.bias.empty() ? 0.0 : l.bias[o];
      for (int64_t i = 0; i < l.in_features; ++i) {
        acc += x[t * l.in_features + i] * static_cast<double>(l.weight[o * l.in_features + i]);
      }
      y[t * l.out_features + o] = acc;
    }
  }
  return y;
}

std::vector<double> RefRmsNorm(const std::vector<double>& x, int64_t tokens, int64_t hidden,
                               const std::vector<float>& w, double eps) {
  std::vector<double> out(x.size());
  for (int64_t t = 0; t < tokens; ++t) {
    double ss = 0.0;
    for (int64_t i = 0; i < hidden; ++i) ss += x[t * hidden + i] * x[t * hidden + i];
    const double inv = 1.0 / std::sqrt(ss / hidden + eps);
    for (int64_t i = 0; i < hidden; ++i) out[t * hidden + i] = x[t * hidden + i] * inv * w[i];
  }
  return out;
}

// The block in double with the textbook causal attention: per query head h (KV head
// h / (heads / kv_heads)) and token t, softmax over s <= t of q_t.k_s / sqrt(d), times v_s.
// RoPE is the engine's (cpu::ApplyRope), applied to fp32 copies as BlockForward does.
std::vector<double> ReferenceBlock(const DenseBlock& b, const ModelConfig& c, const float* inv_freq,
                                   const std::vector<float>& x_in, int64_t tokens) {
  const int64_t hidden = c.hidden_size, heads = c.num_attention_heads, kv = c.num_key_value_heads,
                hd = c.head_dim;
  const std::vector<double> x(x_in.begin(), x_in.end());
  const std::vector<double> xn = RefRmsNorm(x, tokens, hidden, b.input_norm, c.rms_norm_eps);
  const std::vector<double> qd = RefLinear(b.linears[0], xn, tokens);
  const std::vector<double> kd = RefLinear(b.linears[1], xn, tokens);
  const std::vector<double> vd = RefLinear(b.linears[2], xn, tokens);
  std::vector<float> q(qd.begin(), qd.end()), k(kd.begin(), kd.end());
  for (int64_t t = 0; t < tokens; ++t) {
    cpu::ApplyRope(q.data() + t * heads * hd, heads, k.data() + t * kv * hd, kv, hd, t, inv_freq);
  }
  std::vector<double> attn(static_cast<size_t>(tokens * heads * hd), 0.0);
  for (int64_t h = 0; h < heads; ++h) {
    const int64_t kvh = h / (heads / kv);
    for (int64_t t = 0; t < tokens; ++t) {
      std::vector<double> p(static_cast<size_t>(t + 1));
      for (int64_t s = 0; s <= t; ++s) {
        double dot = 0.0;
        for (int64_t i = 0; i < hd; ++i) {
          dot += static_cast<double>(q[(t * heads + h) * hd + i]) * k[(s * kv + kvh) * hd + i];
        }
        p[s] = dot / std::sqrt(static_cast<double>(hd));
      }
      const double mx = *std::max_element(p.begin(), p.end());
      double sum = 0.0;
      for (double& e : p) sum += (e = std::exp(e - mx));
      for (int64_t s = 0; s <= t; ++s) {
        for (int64_t i = 0; i < hd; ++i) {
          attn[(t * heads + h) * hd + i] += p[s] / sum * vd[(s * kv + kvh) * hd + i];
        }
      }
    }
  }
  const std::vector<double> proj = RefLinear(b.linears[3], attn, tokens);
  std::vector<double> h1(x.size());
  for (size_t i = 0; i < x.size(); ++i) h1[i] = x[i] + proj[i];
  const std::vector<double> xn2 = RefRmsNorm(h1, tokens, hidden, b.post_norm, c.rms_norm_eps);
  std::vector<double> gate = RefLinear(b.linears[4], xn2, tokens);
  const std::vector<double> up = RefLinear(b.linears[5], xn2, tokens);
  for (size_t i = 0; i < gate.size(); ++i) gate[i] = gate[i] / (1.0 + std::exp(-gate[i])) * up[i];
  const std::vector<double> down = RefLinear(b.linears[6], gate, tokens);
  std::vector<double> out(x.size());
  for (size_t i = 0; i < x.size(); ++i) out[i] = h1[i] + down[i];
  return out;
}

// max |a - b| / max |b|.
double RelativeMaxError(const std::vector<float>& a, const std::vector<double>& b) {
  double diff = 0.0, scale = 0.0;
  for (size_t i = 0; i < b.size(); ++i) {
    diff = std::max(diff, std::fabs(a[i] - b[i]));
    scale = std::max(scale, std::fabs(b[i]));
  }
  return diff / scale;
}

TEST(BlockForwardTest, GqaAttentionMatchesScalarReference) {
  const ModelConfig c = SmallGqaConfig();
  const std::vector<float> inv_freq = cpu::ComputeRopeInvFreq(c.head_dim, c.rope_theta, {});
  for (bool bias : {false, true}) {
    const DenseBlock b = RandomBlock(c, bias ? 11 : 7, bias);
    // 150 tokens: two full 64-row score blocks and a partial one; 1 token: the degenerate case.
    for (int64_t tokens : {150, 64, 1}) {
      std::mt19937 rng(static_cast<uint32_t>(tokens));
      const std::vector<float> x = Gaussian(tokens * c.hidden_size, &rng, 1.0f);
      const std::vector<double> ref = ReferenceBlock(b, c, inv_freq.data(), x, tokens);
      for (int threads : {1, 2}) {
        std::vector<float> y(x.size());
        BlockForward(b, c, inv_freq.data(), x.data(), tokens, y.data(), nullptr, threads);
        EXPECT_LT(RelativeMaxError(y, ref), 1e-5)
            << "tokens " << tokens << " threads " << threads << " bias " << bias;
      }
    }
  }
}

class PerplexityThreadsTest : public ::testing::Test {
 protected:
  const std::string model_ = std::string(SPQR_SOURCE_DIR) + "/tests/data/test-model";
  const std::string text_ = std::string(SPQR_SOURCE_DIR) + "/tools/test_model_text.txt";
  // The reference forward (the one built on BlockForward).
  static PerplexityOptions Reference(int seqlen, int64_t windows, int threads) {
    PerplexityOptions o;
    o.forward = PerplexityForward::kReference;
    o.seqlen = seqlen;
    o.max_windows = windows;
    o.threads = threads;
    return o;
  }
};

TEST_F(PerplexityThreadsTest, ResultIsIdenticalForOneAndTwoThreads) {
  // 5 windows: two threads get an uneven share.
  auto one = EvaluatePerplexity(model_, text_, Reference(64, 5, 1));
  auto two = EvaluatePerplexity(model_, text_, Reference(64, 5, 2));
  ASSERT_TRUE(one.ok()) << one.status();
  ASSERT_TRUE(two.ok()) << two.status();
  EXPECT_EQ(one->windows, 5);
  EXPECT_EQ(one->threads, 1);
  EXPECT_EQ(two->threads, 2);
  EXPECT_EQ(one->tokens_scored, two->tokens_scored);
  // Bit-identical, not merely close.
  EXPECT_EQ(one->total_nll, two->total_nll);
  EXPECT_EQ(one->mean_loss, two->mean_loss);
  EXPECT_EQ(one->ppl, two->ppl);
  // A random 512-token model scores near log(512) per token, far from 0.
  EXPECT_GT(one->mean_loss, 1.0);
  EXPECT_NEAR(one->total_nll / one->tokens_scored, one->mean_loss, 1e-9);
}

TEST_F(PerplexityThreadsTest, JsonKeepsItsFields) {
  auto r = EvaluatePerplexity(model_, text_, Reference(32, 2, 2));
  ASSERT_TRUE(r.ok()) << r.status();
  const nlohmann::json j = nlohmann::json::parse(r->ToJson("m", "t"));
  for (const char* key :
       {"model", "text", "seq_len", "windows", "tokens_scored", "total_nll", "mean_loss", "ppl",
        "seconds", "threads", "forward", "spqr_kernel", "dense_kernel", "backend"}) {
    EXPECT_TRUE(j.contains(key)) << key;
  }
  EXPECT_EQ(j["windows"].get<int64_t>(), 2);
  EXPECT_EQ(j["ppl"].get<double>(), r->ppl);
  EXPECT_EQ(j["forward"], "reference");
  EXPECT_TRUE(j["spqr_kernel"].is_null());  // kernels are the engine forward's
}

}  // namespace
}  // namespace spqr
