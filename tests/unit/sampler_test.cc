#include "engine/sampler/sampler.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "engine/sampler/philox.h"
#include "gtest/gtest.h"

namespace spqr {
namespace {

// A fixed, irregular logits row.
std::vector<float> TestLogits(int vocab) {
  std::vector<float> logits(vocab);
  for (int i = 0; i < vocab; ++i) logits[i] = std::sin(1.7f * i) * 3.0f + 0.01f * i;
  return logits;
}

SamplingParams Params(float temperature) {
  SamplingParams p;
  p.temperature = temperature;
  return p;
}

// Counts of each token over `n` draws from one RNG stream.
std::vector<int> Histogram(const std::vector<float>& logits, const SamplingParams& params, int n,
                           uint64_t seed, const SamplingHistory& history = {}) {
  Sampler sampler;
  SamplerRng rng{seed, 0};
  std::vector<int> counts(logits.size(), 0);
  for (int i = 0; i < n; ++i)
    ++counts[sampler.Sample(logits, params, history, &rng, false, 0).token_id];
  return counts;
}

int Argmax(const std::vector<float>& v) {
  return static_cast<int>(std::max_element(v.begin(), v.end()) - v.begin());
}

TEST(PhiloxTest, UniformIsInRangeAndDependsOnSeedAndIndex) {
  double sum = 0.0;
  for (uint64_t i = 0; i < 10000; ++i) {
    const double u = PhiloxUniform(42, i);
    ASSERT_GE(u, 0.0);
    ASSERT_LT(u, 1.0);
    sum += u;
  }
  EXPECT_NEAR(sum / 10000, 0.5, 0.02);
  EXPECT_EQ(PhiloxUniform(7, 3), PhiloxUniform(7, 3));
  EXPECT_NE(PhiloxUniform(7, 3), PhiloxUniform(8, 3));
  EXPECT_NE(PhiloxUniform(7, 3), PhiloxUniform(7, 4));
}

TEST(SamplerTest, TemperatureZeroIsArgmaxWithLowestIndexOnTies) {
  Sampler sampler;
  SamplerRng rng{1, 0};
  const std::vector<float> logits = {0.5f, 2.0f, -1.0f, 2.0f};
  const SampleResult r = sampler.Sample(logits, Params(0.0f), {}, &rng, false, 0);
  EXPECT_EQ(r.token_id, 1);
  EXPECT_EQ(rng.draws, 0u) << "greedy must not consume random draws";
}

TEST(SamplerTest, SameSeedSameTokensDifferentSeedsDiffer) {
  const std::vector<float> logits = TestLogits(64);
  auto draw = [&](uint64_t seed) {
    Sampler sampler;
    SamplerRng rng{seed, 0};
    std::vector<int32_t> tokens;
    for (int i = 0; i < 50; ++i) {
      tokens.push_back(sampler.Sample(logits, Params(1.0f), {}, &rng, false, 0).token_id);
    }
    return tokens;
  };
  EXPECT_EQ(draw(1234), draw(1234));
  EXPECT_NE(draw(1234), draw(1235));
}

TEST(SamplerTest, TemperatureOneFollowsSoftmax) {
  const std::vector<float> logits = {1.0f, 0.0f, -1.0f, 0.5f};
  const int n = 20000;
  const std::vector<int> counts = Histogram(logits, Params(1.0f), n, 99);
  double z = 0.0;
  for (float l : logits) z += std::exp(l);
  for (size_t i = 0; i < logits.size(); ++i) {
    const double p = std::exp(logits[i]) / z;
    // 5 standard deviations of a binomial count.
    EXPECT_NEAR(counts[i], p * n, 5 * std::sqrt(n * p * (1 - p))) << "token " << i;
  }
}

TEST(SamplerTest, LowerTemperatureSharpensTheDistribution) {
  const std::vector<float> logits = TestLogits(32);
  const int best = Argmax(logits);
  const int n = 4000;
  const int cold = Histogram(logits, Params(0.3f), n, 5)[best];
  const int warm = Histogram(logits, Params(1.0f), n, 5)[best];
  const int hot = Histogram(logits, Params(3.0f), n, 5)[best];
  EXPECT_GT(cold, warm + n / 20);
  EXPECT_GT(warm, hot + n / 20);
}

TEST(SamplerTest, TopKOneIsGreedy) {
  const std::vector<float> logits = TestLogits(100);
  SamplingParams p = Params(2.0f);
  p.top_k = 1;
  const std::vector<int> counts = Histogram(logits, p, 500, 3);
  EXPECT_EQ(counts[Argmax(logits)], 500);
}

TEST(SamplerTest, TopKKeepsOnlyTheKBest) {
  const std::vector<float> logits = TestLogits(100);
  std::vector<int> order(logits.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int>(i);
  std::sort(order.begin(), order.end(), [&](int a, int b) { return logits[a] > logits[b]; });
  SamplingParams p = Params(5.0f);  // hot, so that the tail would be sampled without top-k
  p.top_k = 5;
  const std::vector<int> counts = Histogram(logits, p, 3000, 4);
  for (size_t rank = 0; rank < order.size(); ++rank) {
    if (rank < 5) {
      EXPECT_GT(counts[order[rank]], 0) << "rank " << rank;
    } else {
      EXPECT_EQ(counts[order[rank]], 0) << "rank " << rank;
    }
  }
}

TEST(SamplerTest, TinyTopPIsGreedy) {
  const std::vector<float> logits = TestLogits(100);
  SamplingParams p = Params(1.5f);
  p.top_p = 1e-6f;
  const std::vector<int> counts = Histogram(logits, p, 500, 8);
  EXPECT_EQ(counts[Argmax(logits)], 500);
}

TEST(SamplerTest, TopPKeepsTheSmallestNucleus) {
  // Probabilities 0.5, 0.3, 0.15, 0.05: top_p 0.75 keeps the first two only (0.5 < 0.75 <= 0.8).
  const std::vector<float> logits = {std::log(0.5f), std::log(0.3f), std::log(0.15f),
                                     std::log(0.05f)};
  SamplingParams p = Params(1.0f);
  p.top_p = 0.75f;
  const int n = 5000;
  const std::vector<int> counts = Histogram(logits, p, n, 11);
  EXPECT_EQ(counts[2] + counts[3], 0);
  EXPECT_NEAR(counts[0] / double(n), 0.5 / 0.8, 0.03);
}

TEST(SamplerTest, MinPDropsTokensBelowTheFractionOfTheBest) {
  // p = 0.4, 0.3, 0.2, 0.1: min_p 0.4 keeps p >= 0.16, i.e. the first three.
  const std::vector<float> logits = {std::log(0.4f), std::log(0.3f), std::log(0.2f),
                                     std::log(0.1f)};
  SamplingParams p = Params(1.0f);
  p.min_p = 0.4f;
  const std::vector<int> counts = Histogram(logits, p, 4000, 12);
  EXPECT_EQ(counts[3], 0);
  EXPECT_GT(counts[2], 0);
  p.min_p = 0.0f;
  EXPECT_GT(Histogram(logits, p, 4000, 12)[3], 0) << "without min_p the last token is sampled";
}

TEST(SamplerTest, RepetitionPenaltyDividesPositiveAndMultipliesNegativeLogits) {
  Sampler sampler;
  SamplerRng rng{0, 0};
  const std::vector<int32_t> prompt = {0};
  SamplingHistory history;
  history.prompt_tokens = prompt;
  SamplingParams p = Params(0.0f);
  p.repetition_penalty = 1.2f;
  // Positive: 2.0 / 1.2 = 1.67 < 1.9.
  EXPECT_EQ(sampler.Sample(std::vector<float>{2.0f, 1.9f}, p, history, &rng, false, 0).token_id, 1);
  // Negative: -1.0 * 1.2 = -1.2 < -1.1.
  EXPECT_EQ(sampler.Sample(std::vector<float>{-1.0f, -1.1f}, p, history, &rng, false, 0).token_id,
            1);
  // Off: the seen token keeps winning.
  p.repetition_penalty = 1.0f;
  EXPECT_EQ(sampler.Sample(std::vector<float>{2.0f, 1.9f}, p, history, &rng, false, 0).token_id, 0);
}

TEST(SamplerTest, PresenceAndFrequencyPenaltiesCountGeneratedTokensOnly) {
  Sampler sampler;
  SamplerRng rng{0, 0};
  const std::vector<float> logits = {3.0f, 2.5f, 0.0f};
  const std::vector<int32_t> prompt = {1, 1, 1};
  const std::vector<int32_t> generated = {0, 0};
  SamplingHistory history{prompt, generated, {}};
  SamplingParams p = Params(0.0f);
  p.frequency_penalty = 0.2f;  // token 0: 3.0 - 0.4 = 2.6 > 2.5 still wins
  EXPECT_EQ(sampler.Sample(logits, p, history, &rng, false, 0).token_id, 0);
  p.frequency_penalty = 0.3f;  // 3.0 - 0.6 = 2.4 < 2.5; the prompt's token 1 is not penalized
  EXPECT_EQ(sampler.Sample(logits, p, history, &rng, false, 0).token_id, 1);
  p.frequency_penalty = 0.0f;
  p.presence_penalty = 0.6f;  // 3.0 - 0.6 = 2.4
  EXPECT_EQ(sampler.Sample(logits, p, history, &rng, false, 0).token_id, 1);
}

TEST(SamplerTest, PenaltyLowersTheProbabilityOfRepeatedTokens) {
  const std::vector<float> logits = TestLogits(16);
  const int best = Argmax(logits);
  const std::vector<int32_t> generated = {best, best, best};
  SamplingHistory history{{}, generated, {}};
  SamplingParams p = Params(1.0f);
  const int plain = Histogram(logits, p, 3000, 21, history)[best];
  p.frequency_penalty = 0.5f;
  const int penalized = Histogram(logits, p, 3000, 21, history)[best];
  EXPECT_LT(penalized, plain - 300);
}

TEST(SamplerTest, BannedTokensAreNeverChosen) {
  const std::vector<float> logits = {5.0f, 0.0f, 4.9f};
  const std::vector<int32_t> banned = {0};
  SamplingHistory history{{}, {}, banned};
  EXPECT_EQ(Histogram(logits, Params(0.0f), 1, 1, history)[2], 1);
  EXPECT_EQ(Histogram(logits, Params(1.0f), 2000, 1, history)[0], 0);
}

TEST(SamplerTest, LogprobsAreTheRawLogSoftmaxAndSumToOne) {
  const std::vector<float> logits = TestLogits(50);
  double total = 0.0;
  for (int t = 0; t < 50; ++t) total += std::exp(ComputeTokenLogprob(logits, t, 0).logprob);
  EXPECT_NEAR(total, 1.0, 1e-5);

  Sampler sampler;
  SamplerRng rng{77, 0};
  SamplingParams p = Params(0.7f);
  p.top_k = 3;
  p.repetition_penalty = 1.5f;
  const SampleResult r = sampler.Sample(logits, p, {}, &rng, true, 5);
  EXPECT_EQ(r.logprob.token_id, r.token_id);
  // Independent of the sampling transforms.
  EXPECT_FLOAT_EQ(r.logprob.logprob, ComputeTokenLogprob(logits, r.token_id, 0).logprob);
  ASSERT_EQ(r.logprob.top.size(), 5u);
  EXPECT_EQ(r.logprob.top[0].token_id, Argmax(logits));
  for (size_t i = 1; i < r.logprob.top.size(); ++i) {
    EXPECT_GE(r.logprob.top[i - 1].logprob, r.logprob.top[i].logprob);
  }
  EXPECT_EQ(r.logprob.is_greedy, r.token_id == Argmax(logits));
  EXPECT_TRUE(ComputeTokenLogprob(logits, Argmax(logits), 0).is_greedy);
}

// Nucleus sampling sorts only a growing window of the best candidates; on a large vocabulary it
// must keep exactly the brute-force nucleus, both for a peaked and for a nearly flat distribution.
TEST(SamplerTest, TopPOnALargeVocabularyKeepsExactlyTheNucleus) {
  for (const float spread : {8.0f, 0.05f}) {
    const int vocab = 32000;
    std::vector<float> logits(vocab);
    for (int i = 0; i < vocab; ++i) logits[i] = spread * std::sin(0.37f * i * i + 0.1f * i);
    std::vector<int> order(vocab);
    for (int i = 0; i < vocab; ++i) order[i] = i;
    std::sort(order.begin(), order.end(), [&](int a, int b) {
      return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
    });
    double total = 0.0;
    for (float l : logits) total += std::exp(static_cast<double>(l) - logits[order[0]]);
    std::vector<bool> in_nucleus(vocab, false);
    double mass = 0.0;
    for (int id : order) {
      in_nucleus[id] = true;
      mass += std::exp(static_cast<double>(logits[id]) - logits[order[0]]);
      if (mass >= 0.9 * total) break;
    }
    SamplingParams p = Params(1.0f);
    p.top_p = 0.9f;
    Sampler sampler;
    SamplerRng rng{31, 0};
    for (int i = 0; i < 40; ++i) {
      const int32_t t = sampler.Sample(logits, p, {}, &rng, false, 0).token_id;
      ASSERT_TRUE(in_nucleus[t]) << "token " << t << " is outside the nucleus (spread " << spread
                                 << ")";
    }
  }
}

}  // namespace
}  // namespace spqr
