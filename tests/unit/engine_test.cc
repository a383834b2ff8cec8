// The engine loop over a deterministic fake backend. The fake stores each token id in its paged
// "KV pool" and computes logits from a hash of the whole context READ BACK THROUGH THE BLOCK
// TABLE, so wrong positions, block tables or block reuse change the tokens; a reference computes
// the same function directly from the token sequence.
#include "engine/runtime/engine.h"

#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "engine/sampler/sampler.h"
#include "gtest/gtest.h"

namespace spqr {
namespace {

constexpr int32_t kVocab = 512;
constexpr int32_t kEos = 2;
constexpr int32_t kContext = 256;

uint64_t Mix(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// Logits of the next token after `context`: pseudo-random per (context, token); the eos token
// becomes overwhelming from position `eos_from` on (-1: never).
std::vector<float> ReferenceLogits(const std::vector<int32_t>& context, int32_t eos_from) {
  uint64_t h = 0;
  for (int32_t t : context) h = Mix(h ^ static_cast<uint64_t>(t));
  std::vector<float> logits(kVocab);
  for (int32_t v = 0; v < kVocab; ++v) {
    logits[v] =
        static_cast<float>(Mix(h * 31 + v) >> 40) / static_cast<float>(1 << 24) * 6.0f - 3.0f;
  }
  logits[kEos] = -5.0f;
  if (eos_from >= 0 && static_cast<int32_t>(context.size()) > eos_from) logits[kEos] = 50.0f;
  return logits;
}

int32_t ArgmaxOf(const std::vector<float>& v) {
  return static_cast<int32_t>(std::max_element(v.begin(), v.end()) - v.begin());
}

std::vector<int32_t> ReferenceGreedy(std::vector<int32_t> context, int n, int32_t eos_from = -1) {
  std::vector<int32_t> out;
  for (int i = 0; i < n; ++i) {
    const int32_t t = ArgmaxOf(ReferenceLogits(context, eos_from));
    out.push_back(t);
    context.push_back(t);
  }
  return out;
}

// std primitives (not absl::Mutex) so that ThreadSanitizer builds see the synchronization.
struct FakeControl {
  std::mutex mu;
  std::condition_variable cv;
  bool paused = false;  // guarded by mu
  std::atomic<int> forwards{0};
  std::atomic<int64_t> tokens{0};  // tokens processed by all forward steps
  std::atomic<int> max_seqs_per_step{0};
  std::atomic<bool> fail{false};
  int32_t eos_from = -1;

  void Pause() {
    std::lock_guard<std::mutex> lock(mu);
    paused = true;
  }
  void Resume() {
    {
      std::lock_guard<std::mutex> lock(mu);
      paused = false;
    }
    cv.notify_all();
  }
};

class FakeBackend : public Backend {
 public:
  explicit FakeBackend(std::shared_ptr<FakeControl> control) : control_(std::move(control)) {}
  std::string name() const override { return "fake"; }
  int64_t KvBytesPerToken() const override { return 64; }
  absl::Status AllocateKvPool(const KvPoolShape& shape) override {
    shape_ = shape;
    pool_.assign(static_cast<size_t>(shape.num_blocks) * shape.block_size, -1);
    return absl::OkStatus();
  }
  KvPoolShape kv_pool_shape() const override { return shape_; }
  BackendMemoryStats memory_stats() const override { return {}; }

  absl::Status Forward(const StepPlan& plan, StepOutput* out) override {
    {
      std::unique_lock<std::mutex> lock(control_->mu);
      control_->cv.wait(lock, [this] { return !control_->paused; });
    }
    if (control_->fail) return absl::InternalError("fake device failure");
    ++control_->forwards;
    int prev = control_->max_seqs_per_step;
    const int n = static_cast<int>(plan.seqs.size());
    while (n > prev && !control_->max_seqs_per_step.compare_exchange_weak(prev, n)) {
    }
    out->vocab_size = kVocab;
    out->logits.clear();
    for (const SequenceStep& s : plan.seqs) {
      control_->tokens += static_cast<int64_t>(s.tokens.size());
      const int32_t end = s.start_pos + static_cast<int32_t>(s.tokens.size());
      if (static_cast<int64_t>(s.block_table.size()) * shape_.block_size < end) {
        return absl::InvalidArgumentError("block table too short");
      }
      for (size_t i = 0; i < s.tokens.size(); ++i) {
        if (s.tokens[i] < 0 || s.tokens[i] >= kVocab) return absl::InvalidArgumentError("token");
        pool_[Slot(s, s.start_pos + static_cast<int32_t>(i))] = s.tokens[i];
      }
      for (int32_t r = 0; r < s.num_logits; ++r) {
        const int32_t last = end - s.num_logits + r;  // logits after position `last`
        std::vector<int32_t> context;
        for (int32_t p = 0; p <= last; ++p) context.push_back(pool_[Slot(s, p)]);
        const std::vector<float> row = ReferenceLogits(context, control_->eos_from);
        out->logits.insert(out->logits.end(), row.begin(), row.end());
      }
    }
    return absl::OkStatus();
  }

 private:
  size_t Slot(const SequenceStep& s, int32_t pos) const {
    const int32_t block = s.block_table[pos / shape_.block_size];
    return static_cast<size_t>(block) * shape_.block_size + pos % shape_.block_size;
  }
  std::shared_ptr<FakeControl> control_;
  KvPoolShape shape_;
  std::vector<int32_t> pool_;
};

// Collects the chunks of every request; Wait() blocks until a request's final chunk.
class Collector {
 public:
  OutputCallback For(const std::string& id) {
    return [this, id](OutputChunk chunk) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        EXPECT_FALSE(done_[id]) << id << ": chunk after the final one";
        if (chunk.finished) done_[id] = true;
        chunks_[id].push_back(std::move(chunk));
      }
      cv_.notify_all();
    };
  }
  std::vector<OutputChunk> Wait(const std::string& id) {
    std::unique_lock<std::mutex> lock(mu_);
    EXPECT_TRUE(cv_.wait_for(lock, std::chrono::seconds(20), [&] { return done_[id]; })) << id;
    return chunks_[id];
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, std::vector<OutputChunk>> chunks_;  // guarded by mu_
  std::map<std::string, bool> done_;                        // guarded by mu_
};

std::vector<int32_t> Tokens(const std::vector<OutputChunk>& chunks) {
  std::vector<int32_t> ids;
  for (const auto& c : chunks) ids.insert(ids.end(), c.token_ids.begin(), c.token_ids.end());
  return ids;
}
std::string Text(const std::vector<OutputChunk>& chunks) {
  std::string text;
  for (const auto& c : chunks) text += c.text;
  return text;
}

std::vector<int32_t> Prompt(int n, int salt) {
  std::vector<int32_t> p = {1};
  for (int i = 1; i < n; ++i)
    p.push_back(3 + static_cast<int32_t>(Mix(i * 7 + salt) % (kVocab - 3)));
  return p;
}

class EngineTest : public ::testing::Test {
 protected:
  std::unique_ptr<Engine> MakeEngine(EngineOptions options = SmallOptions(),
                                     bool with_tokenizer = true) {
    auto model = std::make_unique<LoadedModel>();
    model->dir = "fake";
    model->config.model_type = "llama";
    model->config.vocab_size = kVocab;
    model->config.max_position_embeddings = kContext;
    model->config.bos_token_id = 1;
    model->config.eos_token_ids = {kEos};
    if (with_tokenizer) {
      auto tok = Tokenizer::Open(
          std::string(SPQR_SOURCE_DIR) + "/tests/data/test-model/tokenizer.model", 1, {kEos});
      EXPECT_TRUE(tok.ok()) << tok.status();
      if (tok.ok()) model->tokenizer = std::move(*tok);
    }
    model->backend = std::make_unique<FakeBackend>(control_);
    auto engine = Engine::Create(std::move(model), options);
    EXPECT_TRUE(engine.ok()) << engine.status();
    return engine.ok() ? std::move(*engine) : nullptr;
  }
  static EngineOptions SmallOptions() {
    EngineOptions o;
    o.kv_block_size = 4;
    o.kv_cache_bytes = 64 * 4 * 128;  // 128 blocks of 4 tokens
    o.max_running_requests = 8;
    o.max_batched_tokens = 24;
    return o;
  }

 public:
  static GenerateRequest Greedy(const std::string& id, std::vector<int32_t> prompt, int n) {
    GenerateRequest r;
    r.request_id = id;
    r.prompt_tokens = std::move(prompt);
    r.sampling.temperature = 0.0f;
    r.stopping.max_new_tokens = n;
    return r;
  }

 protected:
  // Waits until the engine thread has published the end of all work.
  static void ExpectAllBlocksFree(const Engine& engine) {
    for (int i = 0; i < 2000; ++i) {
      const EngineStats s = engine.GetStats();
      if (s.kv_blocks_free == s.kv_blocks_total && s.running_requests == 0) return;
      absl::SleepFor(absl::Milliseconds(1));
    }
    const EngineStats s = engine.GetStats();
    ADD_FAILURE() << "KV blocks not returned: " << s.kv_blocks_free << " of " << s.kv_blocks_total;
  }

  // Admission happens before the step's forward pass, so this returns once the engine thread
  // holds every submitted request (and, with the backend paused, is blocked in Forward).
  static void WaitUntilNothingWaits(const Engine& engine) {
    for (int i = 0; i < 5000 && engine.GetStats().waiting_requests > 0; ++i) {
      absl::SleepFor(absl::Milliseconds(1));
    }
    ASSERT_EQ(engine.GetStats().waiting_requests, 0);
  }

  std::shared_ptr<FakeControl> control_ = std::make_shared<FakeControl>();
  Collector collector_;
};

TEST_F(EngineTest, SizesThePoolFromTheByteBudget) {
  auto engine = MakeEngine();
  ASSERT_NE(engine, nullptr);
  const EngineStats s = engine->GetStats();
  EXPECT_EQ(s.kv_blocks_total, 128);
  EXPECT_EQ(s.kv_blocks_free, 128);
  EXPECT_EQ(s.kv_block_size, 4);
  EXPECT_EQ(control_->forwards.load(), 1) << "one warm-up forward";
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
  ASSERT_TRUE(engine->Submit(Greedy("c", Prompt(10, 1), 200), collector_.For("c")).ok());
  engine->Cancel("c");
  engine->Cancel("unknown");  // ignored
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

// --- Prefix caching -----------------------------------------------------------------------------

// Greedy generation with logprobs; returns the final chunk and fills tokens/logprobs.
struct Generated {
  std::vector<int32_t> tokens;
  std::vector<float> logprobs;
  OutputChunk last;
};
Generated RunGreedy(Engine& engine, Collector& collector, const std::string& id,
                    const std::vector<int32_t>& prompt, int n) {
  GenerateRequest r = EngineTest::Greedy(id, prompt, n);
  r.logprobs = true;
  r.top_logprobs = 2;
  EXPECT_TRUE(engine.Submit(r, collector.For(id)).ok());
  Generated g;
  for (const OutputChunk& c : collector.Wait(id)) {
    g.tokens.insert(g.tokens.end(), c.token_ids.begin(), c.token_ids.end());
    for (const TokenLogprob& lp : c.logprobs) g.logprobs.push_back(lp.logprob);
    g.last = c;
  }
  return g;
}

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

// --- The real pieces: LoadModel on the committed test model, CPU backend ------------------------

std::string TestModelDir() { return std::string(SPQR_SOURCE_DIR) + "/tests/data/test-model"; }

std::unique_ptr<Engine> RealEngine(int32_t max_batched_tokens, int32_t block_size = 16,
                                   bool prefix_caching = true) {
  ModelLoadOptions load;
  load.backend = "cpu";
  load.num_threads = 2;
  auto model = LoadModel(TestModelDir(), load);
  EXPECT_TRUE(model.ok()) << model.status();
  if (!model.ok()) return nullptr;
  EngineOptions o;
  o.kv_block_size = block_size;
  o.enable_prefix_caching = prefix_caching;
  o.kv_cache_bytes = 8 << 20;
  o.max_batched_tokens = max_batched_tokens;
  auto engine = Engine::Create(std::move(*model), o);
  EXPECT_TRUE(engine.ok()) << engine.status();
  return engine.ok() ? std::move(*engine) : nullptr;
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
