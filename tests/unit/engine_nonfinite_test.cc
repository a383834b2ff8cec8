// The engine's second line behind the load-time weight check: a step whose logits for a sequence
// hold a NaN or an infinity fails that request (and only it) with INTERNAL and a clear message,
// counted in EngineStats::nonfinite_logits_failures_total, instead of sampling token 0 forever.
// Also: the warm-up (a short prefill and a few decode steps) refuses non-finite logits and names
// the step, and a KV budget beyond the machine's memory is
// refused at Engine::Create instead of ending in std::bad_alloc.
#include <algorithm>
#include <limits>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "engine/runtime/warmup.h"
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

// The model the warm-up tests create engines for (no tokenizer: the warm-up needs none).
std::unique_ptr<LoadedModel> WarmUpModel(std::shared_ptr<FakeControl> control,
                                         int64_t context = kContext) {
  auto model = std::make_unique<LoadedModel>();
  model->config.vocab_size = kVocab;
  model->config.max_position_embeddings = context;
  model->config.bos_token_id = 1;
  model->backend = std::make_unique<FakeBackend>(std::move(control));
  return model;
}

TEST_F(EngineNonFiniteTest, WarmUpWithNonFiniteLogitsIsRefused) {
  control_->poison_token = 1;  // the warm-up prompt's first token (bos)
  control_->poison_value = std::numeric_limits<float>::quiet_NaN();
  auto engine = Engine::Create(WarmUpModel(control_), SmallOptions());
  ASSERT_FALSE(engine.ok());
  EXPECT_EQ(engine.status().code(), absl::StatusCode::kInternal);
  EXPECT_TRUE(absl::StrContains(engine.status().message(),
                                absl::StrCat("warm-up prefill (", kWarmUpPrefillTokens,
                                             " tokens) produced a non-finite logit")))
      << engine.status();
  EXPECT_TRUE(absl::StrContains(engine.status().message(), "after position 0")) << engine.status();
}

// A fault that only the decode path shows (the greedy token of the second decode step poisons
// every later logit): a one-token warm-up passed it, the warm-up's decode steps do not.
TEST_F(EngineNonFiniteTest, WarmUpChecksEveryDecodeStep) {
  KvPoolShape pool;
  pool.num_blocks = 128;
  pool.block_size = 4;
  const WarmUpPlan plan = WarmUpPlanFor(WarmUpModel(control_)->config, pool);
  ASSERT_EQ(plan.decode_steps, kWarmUpDecodeSteps);
  const std::vector<int32_t> greedy = ReferenceGreedy(plan.prompt, kWarmUpDecodeSteps);
  // greedy[1] is fed by decode step 2; its logits are the first that see it.
  ASSERT_EQ(std::count(plan.prompt.begin(), plan.prompt.end(), greedy[1]), 0);
  ASSERT_NE(greedy[0], greedy[1]);
  control_->poison_token = greedy[1];
  control_->poison_value = std::numeric_limits<float>::infinity();
  control_->poison_entry = 5;
  auto engine = Engine::Create(WarmUpModel(control_), SmallOptions());
  ASSERT_FALSE(engine.ok());
  EXPECT_EQ(engine.status().code(), absl::StatusCode::kInternal);
  const std::string expected =
      absl::StrCat("warm-up decode step 2 of ", kWarmUpDecodeSteps, " at position ",
                   plan.prompt.size() + 1, " produced a non-finite logit (inf) after position ",
                   plan.prompt.size() + 1, " for vocabulary entry 5");
  EXPECT_TRUE(absl::StrContains(engine.status().message(), expected)) << engine.status();
}

TEST_F(EngineNonFiniteTest, WarmUpNamesTheStepWhoseForwardFailed) {
  control_->fail_at_forward = 3;  // the prefill, decode step 1, then decode step 2 fails
  auto engine = Engine::Create(WarmUpModel(control_), SmallOptions());
  ASSERT_FALSE(engine.ok());
  EXPECT_EQ(engine.status().code(), absl::StatusCode::kInternal);
  EXPECT_TRUE(absl::StrContains(engine.status().message(), "warm-up decode step 2 of "))
      << engine.status();
  EXPECT_TRUE(absl::StrContains(engine.status().message(), "fake device failure"))
      << engine.status();
}

TEST(WarmUpPlanTest, FitsTheContextAndThePool) {
  ModelConfig config;
  config.vocab_size = 5;
  config.bos_token_id = 3;
  config.max_position_embeddings = 4096;
  KvPoolShape pool;
  pool.num_blocks = 100;
  pool.block_size = 16;
  WarmUpPlan plan = WarmUpPlanFor(config, pool);
  EXPECT_EQ(plan.prompt, (std::vector<int32_t>{3, 4, 0, 1, 2, 3, 4, 0}));  // bos, then the next ids
  EXPECT_EQ(plan.decode_steps, kWarmUpDecodeSteps);
  config.max_position_embeddings = 3;  // a tiny context: one prompt token, two decode steps
  plan = WarmUpPlanFor(config, pool);
  EXPECT_EQ(plan.prompt, (std::vector<int32_t>{3}));
  EXPECT_EQ(plan.decode_steps, 2);
  config.max_position_embeddings = 4096;
  config.bos_token_id = -1;  // no bos: token 0
  pool.num_blocks = 1;       // a pool of one 5-token block
  pool.block_size = 5;
  plan = WarmUpPlanFor(config, pool);
  EXPECT_EQ(plan.prompt, (std::vector<int32_t>{0}));
  EXPECT_EQ(plan.decode_steps, 4);
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
