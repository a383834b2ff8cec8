// The engine loop over a deterministic fake backend (tests/unit/engine_test_util.h), and the real
// pieces: LoadModel on the committed test model with the CPU backend.
#include "engine/runtime/engine.h"

#include <mutex>
#include <string>
#include <vector>

#include "engine/runtime/warmup.h"
#include "tests/unit/engine_test_util.h"

namespace spqr {
namespace {

using namespace engine_test;  // NOLINT(build/namespaces): test helpers

TEST_F(EngineTest, SizesThePoolFromTheByteBudget) {
  auto engine = MakeEngine();
  ASSERT_NE(engine, nullptr);
  const EngineStats s = engine->GetStats();
  EXPECT_EQ(s.kv_blocks_total, 128);
  EXPECT_EQ(s.kv_blocks_free, 128);
  EXPECT_EQ(s.kv_block_size, 4);
  // The warm-up: one prefill of kWarmUpPrefillTokens, then kWarmUpDecodeSteps decode steps.
  EXPECT_EQ(control_->forwards.load(), 1 + kWarmUpDecodeSteps);
  EXPECT_EQ(control_->tokens.load(), kWarmUpPrefillTokens + kWarmUpDecodeSteps);
}

TEST_F(EngineTest, GreedyGenerationMatchesTheReference) {
  auto engine = MakeEngine();
  const std::vector<int32_t> prompt = Prompt(30, 1);  // longer than the 24-token step budget
  ASSERT_TRUE(engine->Submit(Greedy("a", prompt, 12), collector_.For("a")).ok());
  const auto chunks = collector_.Wait("a");
  EXPECT_EQ(Tokens(chunks), ReferenceGreedy(prompt, 12));
  const OutputChunk& last = chunks.back();
  EXPECT_TRUE(last.finished);
  EXPECT_EQ(last.finish_reason, FinishReason::kLength);
  EXPECT_EQ(last.usage.prompt_tokens, 30);
  EXPECT_EQ(last.usage.completion_tokens, 12);
  EXPECT_EQ(chunks.size(), 12u) << "one chunk per token; the last one carries finished";
  EXPECT_GE(last.timings.e2e, last.timings.time_to_first_token);
  EXPECT_GE(last.timings.time_to_first_token, last.timings.queue_time);
  ExpectAllBlocksFree(*engine);
  const EngineStats s = engine->GetStats();
  EXPECT_EQ(s.prompt_tokens_total, 30);
  EXPECT_EQ(s.generation_tokens_total, 12);
  EXPECT_GT(s.steps_total, 12);
}

TEST_F(EngineTest, ConcurrentGreedyRequestsEqualSoloRuns) {
  EngineOptions o = SmallOptions();
  o.max_running_requests = 5;  // 12 requests: some wait for others to finish
  auto engine = MakeEngine(o);
  std::vector<std::vector<int32_t>> prompts;
  std::vector<int> lengths;
  control_->Pause();  // queue everything, then let the engine batch it
  for (int i = 0; i < 12; ++i) {
    prompts.push_back(Prompt(3 + 7 * i % 41, i));
    lengths.push_back(5 + i % 7);
    ASSERT_TRUE(engine
                    ->Submit(Greedy(absl::StrCat("r", i), prompts[i], lengths[i]),
                             collector_.For(absl::StrCat("r", i)))
                    .ok());
  }
  control_->Resume();
  for (int i = 0; i < 12; ++i) {
    EXPECT_EQ(Tokens(collector_.Wait(absl::StrCat("r", i))),
              ReferenceGreedy(prompts[i], lengths[i]))
        << "request " << i;
  }
  EXPECT_GE(control_->max_seqs_per_step.load(), 5) << "requests were not batched";
  ExpectAllBlocksFree(*engine);
}

TEST_F(EngineTest, EosStopsUnlessIgnoredAndNotBeforeMinNewTokens) {
  control_->eos_from = 12;  // eos is the greedy choice once the context has 13 tokens
  auto engine = MakeEngine();
  const std::vector<int32_t> prompt = Prompt(10, 3);
  ASSERT_TRUE(engine->Submit(Greedy("eos", prompt, 20), collector_.For("eos")).ok());
  auto chunks = collector_.Wait("eos");
  EXPECT_EQ(chunks.back().finish_reason, FinishReason::kEos);
  EXPECT_EQ(chunks.back().stop_token_id, kEos);
  std::vector<int32_t> tokens = Tokens(chunks);
  ASSERT_EQ(tokens.size(), 4u);  // 3 tokens, then eos (included in token ids)
  EXPECT_EQ(tokens.back(), kEos);

  GenerateRequest min = Greedy("min", prompt, 20);
  min.stopping.min_new_tokens = 6;
  ASSERT_TRUE(engine->Submit(min, collector_.For("min")).ok());
  chunks = collector_.Wait("min");
  EXPECT_EQ(chunks.back().finish_reason, FinishReason::kEos);
  tokens = Tokens(chunks);
  ASSERT_EQ(tokens.size(), 7u);
  for (int i = 0; i < 6; ++i) EXPECT_NE(tokens[i], kEos);

  GenerateRequest ignore = Greedy("ignore", prompt, 8);
  ignore.stopping.ignore_eos = true;
  ASSERT_TRUE(engine->Submit(ignore, collector_.For("ignore")).ok());
  chunks = collector_.Wait("ignore");
  EXPECT_EQ(chunks.back().finish_reason, FinishReason::kLength);
  EXPECT_EQ(Tokens(chunks).size(), 8u);
}

TEST_F(EngineTest, StopTokenIds) {
  auto engine = MakeEngine();
  const std::vector<int32_t> prompt = Prompt(8, 4);
  const std::vector<int32_t> expected = ReferenceGreedy(prompt, 10);
  GenerateRequest r = Greedy("s", prompt, 10);
  r.stopping.stop_token_ids = {expected[4]};
  ASSERT_TRUE(engine->Submit(r, collector_.For("s")).ok());
  const auto chunks = collector_.Wait("s");
  EXPECT_EQ(chunks.back().finish_reason, FinishReason::kStopToken);
  EXPECT_EQ(chunks.back().stop_token_id, expected[4]);
  const std::vector<int32_t> tokens = Tokens(chunks);
  ASSERT_FALSE(tokens.empty());
  EXPECT_EQ(tokens.back(), expected[4]);
  EXPECT_LE(tokens.size(), 5u);  // the stop token may already appear earlier in the output
}

TEST_F(EngineTest, StopStringCutsTheTextAcrossTokens) {
  auto engine = MakeEngine();
  const std::vector<int32_t> prompt = Prompt(6, 5);
  ASSERT_TRUE(engine->Submit(Greedy("full", prompt, 30), collector_.For("full")).ok());
  const std::string full = Text(collector_.Wait("full"));
  ASSERT_GE(full.size(), 12u) << full;
  // A stop string taken from the middle of the greedy text; it most likely spans tokens.
  size_t start = full.size() / 2;
  while (start < full.size() && (static_cast<unsigned char>(full[start]) & 0xC0) == 0x80) ++start;
  const std::string stop = full.substr(start, 4);
  const size_t first = full.find(stop);
  GenerateRequest r = Greedy("stop", prompt, 30);
  r.stopping.stop_strings = {"never-appears", stop};
  ASSERT_TRUE(engine->Submit(r, collector_.For("stop")).ok());
  const auto chunks = collector_.Wait("stop");
  EXPECT_EQ(chunks.back().finish_reason, FinishReason::kStopString);
  EXPECT_EQ(chunks.back().stop_string, stop);
  EXPECT_EQ(Text(chunks), full.substr(0, first));
}

TEST_F(EngineTest, TextStreamEqualsTheDecodedTokens) {
  auto engine = MakeEngine();
  const std::vector<int32_t> prompt = Prompt(5, 6);
  ASSERT_TRUE(engine->Submit(Greedy("t", prompt, 25), collector_.For("t")).ok());
  const auto chunks = collector_.Wait("t");
  const Tokenizer& tok = *engine->model().tokenizer;
  std::vector<int32_t> all = prompt;
  for (int32_t t : Tokens(chunks)) all.push_back(t);
  EXPECT_EQ(tok.Decode(prompt) + Text(chunks), tok.Decode(all));
}

TEST_F(EngineTest, SeededSamplingIsReproducible) {
  auto engine = MakeEngine();
  auto run = [&](const std::string& id, std::optional<uint64_t> seed) {
    GenerateRequest r = Greedy(id, Prompt(7, 7), 16);
    r.sampling.temperature = 1.0f;
    r.sampling.seed = seed;
    EXPECT_TRUE(engine->Submit(r, collector_.For(id)).ok());
    return Tokens(collector_.Wait(id));
  };
  const auto a = run("a", 42), b = run("b", 42), c = run("c", 43);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
}

TEST_F(EngineTest, LogprobsOfChosenTokensAndAlternatives) {
  auto engine = MakeEngine();
  const std::vector<int32_t> prompt = Prompt(9, 8);
  GenerateRequest r = Greedy("lp", prompt, 4);
  r.logprobs = true;
  r.top_logprobs = 3;
  ASSERT_TRUE(engine->Submit(r, collector_.For("lp")).ok());
  const auto chunks = collector_.Wait("lp");
  std::vector<int32_t> context = prompt;
  for (const OutputChunk& c : chunks) {
    ASSERT_EQ(c.logprobs.size(), c.token_ids.size());
    for (size_t i = 0; i < c.token_ids.size(); ++i) {
      const TokenLogprob want =
          ComputeTokenLogprob(ReferenceLogits(context, -1), c.token_ids[i], 3);
      EXPECT_EQ(c.logprobs[i].token_id, c.token_ids[i]);
      EXPECT_FLOAT_EQ(c.logprobs[i].logprob, want.logprob);
      EXPECT_TRUE(c.logprobs[i].is_greedy);
      ASSERT_EQ(c.logprobs[i].top.size(), 3u);
      EXPECT_EQ(c.logprobs[i].top[0].token_id, c.token_ids[i]);
      context.push_back(c.token_ids[i]);
    }
  }
}

TEST_F(EngineTest, PromptLogprobsForScoringAcrossPrefillChunks) {
  auto engine = MakeEngine();
  const std::vector<int32_t> prompt = Prompt(50, 9);  // 3 chunks of the 24-token budget
  GenerateRequest r = Greedy("score", prompt, 0);
  r.prompt_logprobs = true;
  r.top_logprobs = 2;
  ASSERT_TRUE(engine->Submit(r, collector_.For("score")).ok());
  const auto chunks = collector_.Wait("score");
  ASSERT_EQ(chunks.size(), 1u);
  EXPECT_EQ(chunks[0].finish_reason, FinishReason::kLength);
  EXPECT_TRUE(chunks[0].token_ids.empty());
  ASSERT_EQ(chunks[0].prompt_logprobs.size(), prompt.size() - 1);
  for (size_t i = 1; i < prompt.size(); ++i) {
    const std::vector<int32_t> prefix(prompt.begin(), prompt.begin() + i);
    const TokenLogprob want = ComputeTokenLogprob(ReferenceLogits(prefix, -1), prompt[i], 2);
    const TokenLogprob& got = chunks[0].prompt_logprobs[i - 1];
    EXPECT_EQ(got.token_id, prompt[i]);
    EXPECT_FLOAT_EQ(got.logprob, want.logprob) << "position " << i;
    EXPECT_EQ(got.is_greedy, want.is_greedy);
    ASSERT_EQ(got.top.size(), 2u);
    EXPECT_EQ(got.top[0].token_id, want.top[0].token_id);
  }

  // With generation as well: prompt logprobs arrive once, in the first chunk.
  GenerateRequest both = Greedy("both", prompt, 3);
  both.prompt_logprobs = true;
  ASSERT_TRUE(engine->Submit(both, collector_.For("both")).ok());
  const auto chunks2 = collector_.Wait("both");
  EXPECT_EQ(chunks2[0].prompt_logprobs.size(), prompt.size() - 1);
  for (size_t i = 1; i < chunks2.size(); ++i) EXPECT_TRUE(chunks2[i].prompt_logprobs.empty());
  EXPECT_EQ(Tokens(chunks2), ReferenceGreedy(prompt, 3));
}

// Scoring needs the logits of every prompt position: max_step_logits_bytes cuts its prefill
// chunks so that one step never holds more rows than the budget (here 5 rows of kVocab floats),
// and the results are those of the unbounded run (the reference logits).
TEST_F(EngineTest, PromptLogitsPerStepStayWithinTheBudget) {
  EngineOptions options = SmallOptions();
  options.max_step_logits_bytes = int64_t{5} * kVocab * 4 + 3;  // 5 rows (rounded down)
  std::mutex mu;
  std::vector<StepRecord> steps;
  options.step_observer = [&](const StepRecord& step) {
    std::lock_guard<std::mutex> lock(mu);
    steps.push_back(step);
  };
  auto engine = MakeEngine(options);
  const std::vector<int32_t> prompt = Prompt(50, 9);
  GenerateRequest r = Greedy("score", prompt, 0);
  r.prompt_logprobs = true;
  GenerateRequest other = Greedy("score2", Prompt(30, 4), 0);
  other.prompt_logprobs = true;
  ASSERT_TRUE(engine->Submit(r, collector_.For("score")).ok());
  ASSERT_TRUE(engine->Submit(other, collector_.For("score2")).ok());
  const auto chunks = collector_.Wait("score");
  EXPECT_EQ(collector_.Wait("score2")[0].prompt_logprobs.size(), 29u);
  ASSERT_EQ(chunks.size(), 1u);
  ASSERT_EQ(chunks[0].prompt_logprobs.size(), prompt.size() - 1);
  for (size_t i = 1; i < prompt.size(); ++i) {
    const std::vector<int32_t> prefix(prompt.begin(), prompt.begin() + i);
    const TokenLogprob want = ComputeTokenLogprob(ReferenceLogits(prefix, -1), prompt[i], 0);
    EXPECT_FLOAT_EQ(chunks[0].prompt_logprobs[i - 1].logprob, want.logprob) << "position " << i;
  }
  engine.reset();  // the last step is reported after its chunks went out
  std::lock_guard<std::mutex> lock(mu);
  // 80 prompt positions at 5 per step (without the budget: 24 per step, max_batched_tokens).
  int64_t prefilled = 0;
  for (const StepRecord& step : steps) {
    EXPECT_LE(step.prefill_tokens, 5) << "a step computed more logits rows than the budget";
    prefilled += step.prefill_tokens;
  }
  EXPECT_EQ(prefilled, 80);
  EXPECT_GE(steps.size(), 16u);
}

TEST_F(EngineTest, SubmitValidation) {
  auto engine = MakeEngine();
  auto code = [&](GenerateRequest r) {
    return engine->Submit(r, collector_.For(r.request_id)).code();
  };
  EXPECT_EQ(code(Greedy("empty", {}, 4)), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code(Greedy("range", {1, kVocab}, 4)), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code(Greedy("neg", {1, -1}, 4)), absl::StatusCode::kInvalidArgument);
  const absl::Status too_long = engine->Submit(Greedy("long", Prompt(200, 1), 100), nullptr);
  EXPECT_EQ(too_long.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(too_long.message().find("200"), std::string::npos) << too_long;
  EXPECT_NE(too_long.message().find("256"), std::string::npos) << too_long;
  GenerateRequest bad_min = Greedy("min", {1}, 4);
  bad_min.stopping.min_new_tokens = 5;
  EXPECT_EQ(code(bad_min), absl::StatusCode::kInvalidArgument);
  GenerateRequest bad_p = Greedy("p", {1}, 4);
  bad_p.sampling.top_p = 0.0f;
  EXPECT_EQ(code(bad_p), absl::StatusCode::kInvalidArgument);

  control_->Pause();
  ASSERT_TRUE(engine->Submit(Greedy("dup", {1, 5}, 4), collector_.For("dup")).ok());
  EXPECT_EQ(engine->Submit(Greedy("dup", {1, 5}, 4), nullptr).code(),
            absl::StatusCode::kInvalidArgument);
  engine->StopAccepting();
  EXPECT_EQ(engine->Submit(Greedy("late", {1, 5}, 4), nullptr).code(),
            absl::StatusCode::kUnavailable);
  control_->Resume();
  EXPECT_EQ(collector_.Wait("dup").back().finish_reason, FinishReason::kLength);
}

TEST_F(EngineTest, KvCacheSmallerThanTheRequestIsRejected) {
  EngineOptions o = SmallOptions();
  o.kv_cache_bytes = 64 * 4 * 8;  // 8 blocks = 32 tokens
  auto engine = MakeEngine(o);
  const absl::Status s = engine->Submit(Greedy("big", Prompt(30, 1), 10), nullptr);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_TRUE(engine->Submit(Greedy("ok", Prompt(20, 1), 10), collector_.For("ok")).ok());
  EXPECT_EQ(Tokens(collector_.Wait("ok")).size(), 10u);
}

TEST_F(EngineTest, QueueBoundsGiveResourceExhausted) {
  EngineOptions o = SmallOptions();
  o.max_queued_requests = 3;
  o.max_queued_prompt_tokens = 100;
  auto engine = MakeEngine(o);
  // q0 is admitted and its step blocks in the paused backend; the queue fills behind it.
  control_->Pause();
  ASSERT_TRUE(engine->Submit(Greedy("q0", Prompt(10, 0), 4), collector_.For("q0")).ok());
  WaitUntilNothingWaits(*engine);
  for (int i = 1; i <= 3; ++i) {
    ASSERT_TRUE(engine
                    ->Submit(Greedy(absl::StrCat("q", i), Prompt(10, i), 4),
                             collector_.For(absl::StrCat("q", i)))
                    .ok());
  }
  const absl::Status full = engine->Submit(Greedy("q4", Prompt(10, 4), 4), nullptr);
  EXPECT_EQ(full.code(), absl::StatusCode::kResourceExhausted) << full;
  EXPECT_EQ(engine->GetStats().waiting_requests, 3);
  control_->Resume();
  for (int i = 0; i <= 3; ++i) collector_.Wait(absl::StrCat("q", i));
  // Prompt-token bound: 3 x 40 tokens > 100.
  control_->Pause();
  ASSERT_TRUE(engine->Submit(Greedy("t0", Prompt(40, 0), 2), collector_.For("t0")).ok());
  WaitUntilNothingWaits(*engine);
  ASSERT_TRUE(engine->Submit(Greedy("t1", Prompt(40, 1), 2), collector_.For("t1")).ok());
  ASSERT_TRUE(engine->Submit(Greedy("t2", Prompt(40, 2), 2), collector_.For("t2")).ok());
  EXPECT_EQ(engine->Submit(Greedy("t3", Prompt(40, 3), 2), nullptr).code(),
            absl::StatusCode::kResourceExhausted);
  control_->Resume();
  for (int i = 0; i <= 2; ++i) collector_.Wait(absl::StrCat("t", i));
}

TEST_F(EngineTest, CancelFinishesAndFreesBlocks) {
  auto engine = MakeEngine();
  // Paused, the engine cannot finish 200 tokens before the cancel lands (it did on a fast run).
  control_->Pause();
  ASSERT_TRUE(engine->Submit(Greedy("c", Prompt(10, 1), 200), collector_.For("c")).ok());
  engine->Cancel("c");
  engine->Cancel("unknown");  // ignored
  control_->Resume();
  const auto chunks = collector_.Wait("c");
  EXPECT_EQ(chunks.back().finish_reason, FinishReason::kCancelled);
  EXPECT_LT(Tokens(chunks).size(), 200u);
  ExpectAllBlocksFree(*engine);
  // The id is free again.
  EXPECT_TRUE(engine->Submit(Greedy("c", Prompt(4, 1), 2), collector_.For("c2")).ok());
  collector_.Wait("c2");
}

TEST_F(EngineTest, DeadlineFinishesWithDeadline) {
  auto engine = MakeEngine();
  GenerateRequest r = Greedy("d", Prompt(10, 1), 200);
  r.deadline = absl::Now() + absl::Milliseconds(20);
  control_->Pause();
  ASSERT_TRUE(engine->Submit(r, collector_.For("d")).ok());
  absl::SleepFor(absl::Milliseconds(40));
  control_->Resume();
  const auto chunks = collector_.Wait("d");
  EXPECT_EQ(chunks.back().finish_reason, FinishReason::kDeadline);
  ExpectAllBlocksFree(*engine);
}

TEST_F(EngineTest, BackendErrorFinishesWithError) {
  auto engine = MakeEngine();
  control_->fail = true;
  ASSERT_TRUE(engine->Submit(Greedy("e", Prompt(10, 1), 5), collector_.For("e")).ok());
  const auto chunks = collector_.Wait("e");
  EXPECT_EQ(chunks.back().finish_reason, FinishReason::kError);
  EXPECT_EQ(chunks.back().error.code(), absl::StatusCode::kInternal);
  ExpectAllBlocksFree(*engine);
}

TEST_F(EngineTest, DestructorCancelsLiveRequests) {
  auto engine = MakeEngine();
  control_->Pause();
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(engine
                    ->Submit(Greedy(absl::StrCat("x", i), Prompt(10, i), 100),
                             collector_.For(absl::StrCat("x", i)))
                    .ok());
  }
  std::thread resume([this] {
    absl::SleepFor(absl::Milliseconds(30));
    control_->Resume();
  });
  engine.reset();
  resume.join();
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(collector_.Wait(absl::StrCat("x", i)).back().finish_reason, FinishReason::kCancelled);
  }
}

TEST_F(EngineTest, WorksWithoutATokenizer) {
  auto engine = MakeEngine(SmallOptions(), /*with_tokenizer=*/false);
  const std::vector<int32_t> prompt = Prompt(6, 2);
  ASSERT_TRUE(engine->Submit(Greedy("n", prompt, 5), collector_.For("n")).ok());
  const auto chunks = collector_.Wait("n");
  EXPECT_EQ(Tokens(chunks), ReferenceGreedy(prompt, 5));
  EXPECT_EQ(Text(chunks), "");
  GenerateRequest r = Greedy("s", prompt, 5);
  r.stopping.stop_strings = {"x"};
  EXPECT_EQ(engine->Submit(r, nullptr).code(), absl::StatusCode::kInvalidArgument);
}

TEST(LoadModelTest, LoadsTheTestModel) {
  auto model = LoadModel(TestModelDir(), ModelLoadOptions());
  ASSERT_TRUE(model.ok()) << model.status();
  const LoadedModel& m = **model;
  EXPECT_EQ(m.config.vocab_size, 512);
  ASSERT_NE(m.tokenizer, nullptr);
  EXPECT_EQ(m.tokenizer->bos_id(), 1);
  EXPECT_TRUE(m.tokenizer->IsEos(2));
  ASSERT_NE(m.backend, nullptr);
  EXPECT_EQ(m.backend->name(), "cpu");
  EXPECT_EQ(m.quantization.method, "none");
  EXPECT_EQ(m.quantization.weight_dtype, "bf16");
}

TEST(LoadModelTest, ErrorsNameTheProblem) {
  auto missing = LoadModel("/nonexistent/model-dir", ModelLoadOptions());
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("/nonexistent/model-dir"), std::string::npos)
      << missing.status();
  ModelLoadOptions bad;
  bad.backend = "tpu";
  auto unknown = LoadModel(TestModelDir(), bad);
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kInvalidArgument) << unknown.status();
  ModelLoadOptions cuda;
  cuda.backend = "cuda";
  auto no_cuda = LoadModel(TestModelDir(), cuda);
  EXPECT_FALSE(no_cuda.ok());  // not built in, or built in but not wired yet
  EXPECT_NE(no_cuda.status().message().find("cuda"), std::string::npos) << no_cuda.status();
}

TEST(RealEngineTest, ConcurrentGreedyRequestsEqualSoloRunsOnTheCpuBackend) {
  auto engine = RealEngine(/*max_batched_tokens=*/32);
  ASSERT_NE(engine, nullptr);
  const Tokenizer& tok = *engine->model().tokenizer;
  const std::vector<std::string> texts = {"The", "Once upon a time there was a small program that",
                                          "Packages are installed with apt and",
                                          "In the beginning the configuration file says"};
  Collector collector;
  std::vector<std::vector<int32_t>> solo;
  for (size_t i = 0; i < texts.size(); ++i) {
    GenerateRequest r = EngineTest::Greedy(absl::StrCat("solo", i), tok.Encode(texts[i], true), 12);
    ASSERT_TRUE(engine->Submit(r, collector.For(r.request_id)).ok());
    solo.push_back(Tokens(collector.Wait(r.request_id)));
    ASSERT_EQ(solo.back().size(), 12u);
  }
  for (size_t i = 0; i < texts.size(); ++i) {
    GenerateRequest r =
        EngineTest::Greedy(absl::StrCat("batch", i), tok.Encode(texts[i], true), 12);
    ASSERT_TRUE(engine->Submit(r, collector.For(r.request_id)).ok());
  }
  for (size_t i = 0; i < texts.size(); ++i) {
    EXPECT_EQ(Tokens(collector.Wait(absl::StrCat("batch", i))), solo[i]) << texts[i];
  }
}

TEST(RealEngineTest, ChunkedPrefillGivesTheSamePromptLogprobs) {
  auto chunked = RealEngine(/*max_batched_tokens=*/7);
  auto whole = RealEngine(/*max_batched_tokens=*/512);
  ASSERT_NE(chunked, nullptr);
  ASSERT_NE(whole, nullptr);
  const std::vector<int32_t> prompt = chunked->model().tokenizer->Encode(
      "A longer text to score, so that the prompt is split into several prefill chunks.", true);
  ASSERT_GT(prompt.size(), 14u);
  auto score = [&](Engine& engine) {
    Collector collector;
    GenerateRequest r = EngineTest::Greedy("score", prompt, 0);
    r.prompt_logprobs = true;
    EXPECT_TRUE(engine.Submit(r, collector.For("score")).ok());
    return collector.Wait("score").back().prompt_logprobs;
  };
  const std::vector<TokenLogprob> a = score(*chunked), b = score(*whole);
  ASSERT_EQ(a.size(), prompt.size() - 1);
  ASSERT_EQ(b.size(), prompt.size() - 1);
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].token_id, prompt[i + 1]);
    EXPECT_NEAR(a[i].logprob, b[i].logprob, 1e-4) << "token " << i + 1;
    EXPECT_LE(a[i].logprob, 0.0f);
  }
}

// Regression: many requests admitted in the same step (and a scoring request next to generating
// ones) must get disjoint KV blocks; the CPU backend rejects a step in which two sequences write
// one slot. Requests are queued faster than one step, so several are admitted together.
TEST(RealEngineTest, ManyConcurrentRequestsAndScoringShareAStep) {
  for (const int32_t block_size : {16, 4}) {
    auto engine = RealEngine(/*max_batched_tokens=*/block_size == 16 ? 256 : 19, block_size);
    ASSERT_NE(engine, nullptr);
    const Tokenizer& tok = *engine->model().tokenizer;
    Collector collector;
    const std::vector<int32_t> base = tok.Encode("Once upon a time there was", true);
    for (int round = 0; round < 3; ++round) {
      std::vector<std::string> ids;
      for (int i = 0; i < 16; ++i) {
        std::vector<int32_t> prompt = base;
        for (int k = 0; k <= (i + round) % 5; ++k) prompt.push_back(3 + i + k);
        GenerateRequest r =
            EngineTest::Greedy(absl::StrCat(block_size, "/", round, "/gen", i), prompt, 2 + i % 6);
        if (i % 4 == 3) {  // a scoring request between generating ones
          r.stopping.max_new_tokens = 0;
          r.prompt_logprobs = true;
        }
        ids.push_back(r.request_id);
        ASSERT_TRUE(engine->Submit(r, collector.For(r.request_id)).ok());
      }
      for (const std::string& id : ids) {
        const OutputChunk last = collector.Wait(id).back();
        EXPECT_TRUE(last.error.ok()) << id << ": " << last.error;
        EXPECT_NE(last.finish_reason, FinishReason::kError) << id;
      }
    }
  }
}

}  // namespace
}  // namespace spqr
