// The engine's second line behind the load-time weight check: a step whose logits for a sequence
// hold a NaN or an infinity fails that request (and only it) with INTERNAL and a clear message,
// counted in EngineStats::nonfinite_logits_failures_total, instead of sampling token 0 forever.
// Also: the warm-up refuses non-finite logits, and a KV budget beyond the machine's memory is
// refused at Engine::Create instead of ending in std::bad_alloc.
#include <algorithm>
#include <limits>

#include "absl/strings/match.h"
#include "engine/util/system_memory.h"
#include "tests/unit/engine_test_util.h"

namespace spqr {
namespace {
using namespace engine_test;  // NOLINT: the shared fakes of the engine tests

constexpr int32_t kPoison = 500;

std::vector<int32_t> CleanPrompt(int n, int salt) {
  std::vector<int32_t> p = Prompt(n, salt);
  std::replace(p.begin(), p.end(), kPoison, kPoison - 1);
  return p;
}

class EngineNonFiniteTest : public EngineTest {
 protected:
  void Poison(float value, int32_t entry = 17) {
    control_->poison_token = kPoison;
    control_->poison_value = value;
    control_->poison_entry = entry;
  }
  static void ExpectFailedWithInternal(const std::vector<OutputChunk>& chunks) {
    ASSERT_FALSE(chunks.empty());
    const OutputChunk& last = chunks.back();
    EXPECT_EQ(last.finish_reason, FinishReason::kError);
    EXPECT_EQ(last.error.code(), absl::StatusCode::kInternal) << last.error;
    EXPECT_TRUE(absl::StrContains(last.error.message(), "non-finite logit")) << last.error;
  }
};

TEST_F(EngineNonFiniteTest, NanInAPromptStepFailsOnlyThatRequest) {
  Poison(std::numeric_limits<float>::quiet_NaN());
  auto engine = MakeEngine();
  ASSERT_NE(engine, nullptr);
  std::vector<int32_t> bad = CleanPrompt(10, 1);
  bad[4] = kPoison;
  const std::vector<int32_t> good = CleanPrompt(10, 2);
  // "good" is admitted and held in its prefill step; "bad" queues meanwhile, so the next step
  // batches good's decode with bad's prefill: one step, one poisoned sequence.
  control_->Pause();
  ASSERT_TRUE(engine->Submit(Greedy("good", good, 6), collector_.For("good")).ok());
  WaitUntilNothingWaits(*engine);
  ASSERT_TRUE(engine->Submit(Greedy("bad", bad, 6), collector_.For("bad")).ok());
  control_->Resume();
  const auto bad_chunks = collector_.Wait("bad");
  ExpectFailedWithInternal(bad_chunks);
  EXPECT_TRUE(Tokens(bad_chunks).empty());
  EXPECT_TRUE(absl::StrContains(bad_chunks.back().error.message(), "(nan)") ||
              absl::StrContains(bad_chunks.back().error.message(), "(-nan)"))
      << bad_chunks.back().error;
  EXPECT_TRUE(absl::StrContains(bad_chunks.back().error.message(), "vocabulary entry 17"))
      << bad_chunks.back().error;
  const auto good_chunks = collector_.Wait("good");
  EXPECT_EQ(good_chunks.back().finish_reason, FinishReason::kLength);
  EXPECT_EQ(Tokens(good_chunks), ReferenceGreedy(good, 6));
  EXPECT_GE(control_->max_seqs_per_step.load(), 2);  // they did share a step
  EXPECT_EQ(engine->GetStats().nonfinite_logits_failures_total, 1);
  ExpectAllBlocksFree(*engine);
}

TEST_F(EngineNonFiniteTest, InfInADecodeStepStopsTheStreamAfterTheTokensSoFar) {
  const std::vector<int32_t> prompt = CleanPrompt(9, 3);
  const std::vector<int32_t> expected = ReferenceGreedy(prompt, 8);
  // The third generated token poisons every later step of this sequence.
  ASSERT_EQ(std::count(prompt.begin(), prompt.end(), expected[2]), 0);
  ASSERT_NE(expected[0], expected[2]);
  ASSERT_NE(expected[1], expected[2]);
  control_->poison_token = expected[2];
  control_->poison_value = std::numeric_limits<float>::infinity();
  control_->poison_entry = 3;
  auto engine = MakeEngine();
  ASSERT_NE(engine, nullptr);
  GenerateRequest r = Greedy("d", prompt, 8);
  r.logprobs = true;
  ASSERT_TRUE(engine->Submit(r, collector_.For("d")).ok());
  const auto chunks = collector_.Wait("d");
  ExpectFailedWithInternal(chunks);
  EXPECT_EQ(Tokens(chunks), std::vector<int32_t>(expected.begin(), expected.begin() + 3));
  EXPECT_TRUE(absl::StrContains(chunks.back().error.message(), "(inf)")) << chunks.back().error;
  EXPECT_EQ(engine->GetStats().nonfinite_logits_failures_total, 1);
  ExpectAllBlocksFree(*engine);
}

TEST_F(EngineNonFiniteTest, ScoringRequestWithANonFinitePromptLogitFails) {
  Poison(-std::numeric_limits<float>::infinity(), 0);
  auto engine = MakeEngine();
  ASSERT_NE(engine, nullptr);
  std::vector<int32_t> prompt = CleanPrompt(20, 4);
  prompt[15] = kPoison;
  GenerateRequest r = Greedy("score", prompt, 0);
  r.prompt_logprobs = true;
  ASSERT_TRUE(engine->Submit(r, collector_.For("score")).ok());
  const auto chunks = collector_.Wait("score");
  ExpectFailedWithInternal(chunks);
  EXPECT_TRUE(absl::StrContains(chunks.back().error.message(), "after position 15"))
      << chunks.back().error;
  EXPECT_EQ(engine->GetStats().nonfinite_logits_failures_total, 1);
  ExpectAllBlocksFree(*engine);
}

TEST_F(EngineNonFiniteTest, WarmUpWithNonFiniteLogitsIsRefused) {
  control_->poison_token = 1;  // the warm-up token (bos)
  control_->poison_value = std::numeric_limits<float>::quiet_NaN();
  auto model = std::make_unique<LoadedModel>();
  model->config.vocab_size = kVocab;
  model->config.max_position_embeddings = kContext;
  model->config.bos_token_id = 1;
  model->backend = std::make_unique<FakeBackend>(control_);
  auto engine = Engine::Create(std::move(model), SmallOptions());
  ASSERT_FALSE(engine.ok());
  EXPECT_EQ(engine.status().code(), absl::StatusCode::kInternal);
  EXPECT_TRUE(absl::StrContains(engine.status().message(), "warm-up")) << engine.status();
  EXPECT_TRUE(absl::StrContains(engine.status().message(), "non-finite")) << engine.status();
}

TEST(EngineKvBudgetTest, KvCacheBeyondTheMachinesMemoryIsRefusedNotBadAlloc) {
  const HostMemoryLimit limit = GetHostMemoryLimit();
  ASSERT_GT(limit.bytes, 0);
  ModelLoadOptions load;
  load.backend = "cpu";
  load.num_threads = 1;
  auto model = LoadModel(TestModelDir(), load);
  ASSERT_TRUE(model.ok()) << model.status();
  EngineOptions o;
  o.kv_block_size = 16;
  o.kv_cache_bytes = int64_t{1} << 62;  // more than 2^31 blocks: refused by the engine
  auto engine = Engine::Create(std::move(*model), o);
  ASSERT_FALSE(engine.ok());
  EXPECT_TRUE(absl::StrContains(engine.status().message(), "kv_cache_bytes")) << engine.status();
  // Within 2^31 blocks but more than the machine has: the backend refuses it clearly.
  auto model2 = LoadModel(TestModelDir(), load);
  ASSERT_TRUE(model2.ok()) << model2.status();
  o.kv_cache_bytes = limit.bytes + (int64_t{1} << 30);
  auto engine2 = Engine::Create(std::move(*model2), o);
  ASSERT_FALSE(engine2.ok());
  EXPECT_EQ(engine2.status().code(), absl::StatusCode::kResourceExhausted) << engine2.status();
  EXPECT_TRUE(absl::StrContains(engine2.status().message(), limit.source)) << engine2.status();
  EXPECT_TRUE(absl::StrContains(engine2.status().message(), "host memory")) << engine2.status();
}

}  // namespace
}  // namespace spqr
