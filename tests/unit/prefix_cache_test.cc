// Prefix caching in the engine: a repeated prompt reuses cached KV blocks and produces exactly
// the same tokens and logprobs as a full recomputation (fake backend and real CPU backend),
// scoring requests, eviction under memory pressure, and the cache switched off.
#include <string>
#include <vector>

#include "engine/runtime/engine.h"
#include "tests/unit/engine_test_util.h"

namespace spqr {
namespace {

using namespace engine_test;  // NOLINT(build/namespaces): test helpers

TEST_F(EngineTest, RepeatedPromptHitsThePrefixCacheWithIdenticalOutput) {
  auto engine = MakeEngine();  // blocks of 4 tokens, prefix caching on by default
  const std::vector<int32_t> prompt = Prompt(30, 3);
  const Generated first = RunGreedy(*engine, collector_, "first", prompt, 6);
  EXPECT_EQ(first.tokens, ReferenceGreedy(prompt, 6));
  EXPECT_EQ(first.last.usage.cached_prompt_tokens, 0);
  ExpectAllBlocksFree(*engine);
  EXPECT_GT(engine->GetStats().kv_blocks_cached, 0) << "finished blocks stay cached";
  const int64_t tokens_before = control_->tokens;
  const Generated again = RunGreedy(*engine, collector_, "again", prompt, 6);
  EXPECT_EQ(again.tokens, first.tokens);
  EXPECT_EQ(again.logprobs, first.logprobs) << "bit-identical logprobs";
  // (30 - 1) / 4 = 7 full blocks may be reused: the last prompt token is always computed.
  EXPECT_EQ(again.last.usage.cached_prompt_tokens, 28);
  EXPECT_EQ(again.last.usage.prompt_tokens, 30);
  EXPECT_EQ(control_->tokens - tokens_before, 2 + 5) << "prefill of 2 tokens, then 5 decodes";
  const EngineStats s = engine->GetStats();
  EXPECT_EQ(s.prefix_cache_queries_total, 14);
  EXPECT_EQ(s.prefix_cache_hits_total, 7);
  ExpectAllBlocksFree(*engine);

  // A prompt that is exactly 8 blocks still computes its last block; a continuation of the first
  // conversation (prompt + generated tokens) reuses the generated blocks too.
  const std::vector<int32_t> exact(prompt.begin(), prompt.begin() + 28);
  const Generated e = RunGreedy(*engine, collector_, "exact", exact, 3);
  EXPECT_EQ(e.tokens, ReferenceGreedy(exact, 3));
  EXPECT_EQ(e.last.usage.cached_prompt_tokens, 24);
  std::vector<int32_t> turn2 = prompt;
  turn2.insert(turn2.end(), first.tokens.begin(), first.tokens.end());
  turn2.push_back(77);
  const Generated t = RunGreedy(*engine, collector_, "turn2", turn2, 3);
  EXPECT_EQ(t.tokens, ReferenceGreedy(turn2, 3));
  EXPECT_EQ(t.last.usage.cached_prompt_tokens, 32) << "blocks written while generating";
  ExpectAllBlocksFree(*engine);
}

TEST_F(EngineTest, PrefixCacheOffBehavesAsBefore) {
  EngineOptions o = SmallOptions();
  o.enable_prefix_caching = false;
  auto engine = MakeEngine(o);
  const std::vector<int32_t> prompt = Prompt(30, 3);
  const Generated first = RunGreedy(*engine, collector_, "first", prompt, 6);
  const int64_t tokens_before = control_->tokens;
  const Generated again = RunGreedy(*engine, collector_, "again", prompt, 6);
  EXPECT_EQ(again.tokens, first.tokens);
  EXPECT_EQ(again.logprobs, first.logprobs);
  EXPECT_EQ(again.last.usage.cached_prompt_tokens, 0);
  EXPECT_EQ(control_->tokens - tokens_before, 30 + 5) << "the whole prompt is recomputed";
  ExpectAllBlocksFree(*engine);
  const EngineStats s = engine->GetStats();
  EXPECT_EQ(s.prefix_cache_queries_total, 0);
  EXPECT_EQ(s.prefix_cache_hits_total, 0);
  EXPECT_EQ(s.kv_blocks_cached, 0);
}

TEST_F(EngineTest, ScoringComputesEveryPromptPositionButFillsTheCache) {
  auto engine = MakeEngine();
  const std::vector<int32_t> prompt = Prompt(21, 5);
  auto score = [&](const std::string& id) {
    GenerateRequest r = Greedy(id, prompt, 0);
    r.prompt_logprobs = true;
    EXPECT_TRUE(engine->Submit(r, collector_.For(id)).ok());
    return collector_.Wait(id).back();
  };
  const OutputChunk a = score("s1");
  const OutputChunk b = score("s2");
  EXPECT_EQ(b.usage.cached_prompt_tokens, 0) << "prompt_logprobs requests skip the cache";
  ASSERT_EQ(b.prompt_logprobs.size(), prompt.size() - 1);
  for (size_t i = 0; i < a.prompt_logprobs.size(); ++i) {
    EXPECT_EQ(b.prompt_logprobs[i].logprob, a.prompt_logprobs[i].logprob);
  }
  // ... but their blocks serve a later generation from the same prompt.
  const Generated g = RunGreedy(*engine, collector_, "gen", prompt, 4);
  EXPECT_EQ(g.tokens, ReferenceGreedy(prompt, 4));
  EXPECT_EQ(g.last.usage.cached_prompt_tokens, 20);
  ExpectAllBlocksFree(*engine);
}

TEST_F(EngineTest, PrefixCacheEvictsUnderMemoryPressure) {
  EngineOptions o = SmallOptions();
  o.kv_cache_bytes = 64 * 4 * 16;  // 16 blocks of 4 tokens
  auto engine = MakeEngine(o);
  const std::vector<int32_t> a = Prompt(20, 11), big = Prompt(60, 12);
  const Generated a1 = RunGreedy(*engine, collector_, "a1", a, 4);
  ExpectAllBlocksFree(*engine);
  EXPECT_GE(engine->GetStats().kv_blocks_cached, 5);
  // 60 + 4 tokens need the whole pool: every cached block is evicted to admit it.
  const Generated b = RunGreedy(*engine, collector_, "big", big, 4);
  EXPECT_EQ(b.tokens, ReferenceGreedy(big, 4));
  EXPECT_EQ(b.last.finish_reason, FinishReason::kLength);
  ExpectAllBlocksFree(*engine);
  // The first prompt's blocks are gone (overwritten): it is recomputed, with the same result.
  const Generated a2 = RunGreedy(*engine, collector_, "a2", a, 4);
  EXPECT_EQ(a2.last.usage.cached_prompt_tokens, 0);
  EXPECT_EQ(a2.tokens, a1.tokens);
  EXPECT_EQ(a2.logprobs, a1.logprobs);
  // Which is cached again: a third run hits.
  const Generated a3 = RunGreedy(*engine, collector_, "a3", a, 4);
  EXPECT_EQ(a3.last.usage.cached_prompt_tokens, 16);
  EXPECT_EQ(a3.tokens, a1.tokens);
  ExpectAllBlocksFree(*engine);
}

TEST_F(EngineTest, ConcurrentRequestsSharingPrefixesEqualTheReference) {
  EngineOptions o = SmallOptions();
  o.max_running_requests = 6;
  auto engine = MakeEngine(o);
  const std::vector<int32_t> stem = Prompt(17, 21);
  std::vector<std::vector<int32_t>> prompts;
  for (int wave = 0; wave < 3; ++wave) {
    control_->Pause();  // each wave is admitted together, later waves find earlier blocks
    for (int i = 0; i < 8; ++i) {
      std::vector<int32_t> p(stem.begin(), stem.begin() + 1 + (5 * i + wave) % 17);
      for (int k = 0; k < i % 3; ++k) p.push_back(3 + 10 * i + k);
      const int idx = static_cast<int>(prompts.size());
      prompts.push_back(p);
      ASSERT_TRUE(engine
                      ->Submit(Greedy(absl::StrCat("w", idx), p, 3 + i % 4),
                               collector_.For(absl::StrCat("w", idx)))
                      .ok());
    }
    control_->Resume();
    for (int k = 0; k < 8; ++k) {
      const int idx = wave * 8 + k;
      EXPECT_EQ(Tokens(collector_.Wait(absl::StrCat("w", idx))),
                ReferenceGreedy(prompts[idx], 3 + k % 4))
          << "request " << idx;
    }
  }
  EXPECT_GT(engine->GetStats().prefix_cache_hits_total, 0);
  ExpectAllBlocksFree(*engine);
}

// On the real CPU backend a prefix-cache hit gives the same tokens and logprobs as recomputing
// the whole prompt (an engine without the cache), both for a repeated prompt and for requests
// that share a prefix and run in the same steps. Bit-identical, since the CPU backend's results
// do not depend on chunking or batching (engine/backend/cpu/cpu_backend.h).
TEST(RealEngineTest, PrefixCacheHitEqualsRecomputation) {
  auto cached = RealEngine(/*max_batched_tokens=*/64, /*block_size=*/4, /*prefix_caching=*/true);
  auto plain = RealEngine(/*max_batched_tokens=*/64, /*block_size=*/4, /*prefix_caching=*/false);
  ASSERT_NE(cached, nullptr);
  ASSERT_NE(plain, nullptr);
  const Tokenizer& tok = *cached->model().tokenizer;
  const std::vector<int32_t> prompt =
      tok.Encode("Once upon a time there was a small program that liked to count", true);
  ASSERT_GT(prompt.size(), 9u);
  Collector collector;
  const Generated want = RunGreedy(*plain, collector, "plain", prompt, 8);
  const Generated first = RunGreedy(*cached, collector, "first", prompt, 8);
  const Generated again = RunGreedy(*cached, collector, "again", prompt, 8);
  EXPECT_EQ(first.tokens, want.tokens);
  EXPECT_EQ(again.tokens, want.tokens);
  EXPECT_EQ(again.last.usage.cached_prompt_tokens,
            static_cast<int32_t>((prompt.size() - 1) / 4 * 4));
  ASSERT_EQ(again.logprobs.size(), want.logprobs.size());
  for (size_t i = 0; i < want.logprobs.size(); ++i) {
    EXPECT_EQ(again.logprobs[i], want.logprobs[i]) << "token " << i;
  }
  // Concurrent requests extending the cached prompt, admitted together.
  std::vector<std::string> ids;
  std::vector<Generated> solo;
  for (int i = 0; i < 4; ++i) {
    std::vector<int32_t> p = prompt;
    for (int k = 0; k <= i; ++k) p.push_back(20 + 7 * i + k);
    solo.push_back(RunGreedy(*plain, collector, absl::StrCat("solo", i), p, 5));
    GenerateRequest r = EngineTest::Greedy(absl::StrCat("ext", i), p, 5);
    ids.push_back(r.request_id);
    ASSERT_TRUE(cached->Submit(r, collector.For(r.request_id)).ok());
  }
  for (int i = 0; i < 4; ++i) {
    const std::vector<OutputChunk> chunks = collector.Wait(ids[i]);
    EXPECT_EQ(Tokens(chunks), solo[i].tokens) << ids[i];
    EXPECT_GT(chunks.back().usage.cached_prompt_tokens, 0) << ids[i];
  }
}

}  // namespace
}  // namespace spqr
