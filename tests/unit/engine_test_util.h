// Shared pieces of the engine tests (engine_test.cc, prefix_cache_test.cc): a deterministic fake
// backend that stores each token id in its paged "KV pool" and computes logits from a hash of the
// whole context READ BACK THROUGH THE BLOCK TABLE (so wrong positions, block tables or block reuse
// change the tokens), a reference that computes the same function directly from the token
// sequence, a chunk collector, and the real test model on the CPU backend.
#pragma once

#include <algorithm>
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
#include "engine/runtime/engine.h"
#include "engine/sampler/sampler.h"
#include "gtest/gtest.h"

namespace spqr {
namespace engine_test {

constexpr int32_t kVocab = 512;
constexpr int32_t kEos = 2;
constexpr int32_t kContext = 256;

inline uint64_t Mix(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// Logits of the next token after `context`: pseudo-random per (context, token); the eos token
// becomes overwhelming from position `eos_from` on (-1: never).
inline std::vector<float> ReferenceLogits(const std::vector<int32_t>& context, int32_t eos_from) {
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

inline int32_t ArgmaxOf(const std::vector<float>& v) {
  return static_cast<int32_t>(std::max_element(v.begin(), v.end()) - v.begin());
}

inline std::vector<int32_t> ReferenceGreedy(std::vector<int32_t> context, int n,
                                            int32_t eos_from = -1) {
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
  std::atomic<int> fail_at_forward{-1};  // this forward (1 = the first) fails, the others run
  int32_t eos_from = -1;
  // Logits after a context that holds `poison_token` get `poison_value` (NaN, Inf) at entry
  // `poison_entry`: a numerical fault that hits only the sequences that saw the token.
  int32_t poison_token = -1;
  float poison_value = 0.0f;
  int32_t poison_entry = 0;

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
    if (control_->fail || control_->forwards + 1 == control_->fail_at_forward) {
      return absl::InternalError("fake device failure");
    }
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
        std::vector<float> row = ReferenceLogits(context, control_->eos_from);
        if (std::find(context.begin(), context.end(), control_->poison_token) != context.end()) {
          row[control_->poison_entry] = control_->poison_value;
        }
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

inline std::vector<int32_t> Tokens(const std::vector<OutputChunk>& chunks) {
  std::vector<int32_t> ids;
  for (const auto& c : chunks) ids.insert(ids.end(), c.token_ids.begin(), c.token_ids.end());
  return ids;
}
inline std::string Text(const std::vector<OutputChunk>& chunks) {
  std::string text;
  for (const auto& c : chunks) text += c.text;
  return text;
}

inline std::vector<int32_t> Prompt(int n, int salt) {
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

// Greedy generation with logprobs; returns the final chunk and fills tokens/logprobs.
struct Generated {
  std::vector<int32_t> tokens;
  std::vector<float> logprobs;
  OutputChunk last;
};
inline Generated RunGreedy(Engine& engine, Collector& collector, const std::string& id,
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

// --- The real pieces: LoadModel on the committed test model, CPU backend ------------------------

inline std::string TestModelDir() {
  return std::string(SPQR_SOURCE_DIR) + "/tests/data/test-model";
}

inline std::unique_ptr<Engine> RealEngine(int32_t max_batched_tokens, int32_t block_size = 16,
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

}  // namespace engine_test
}  // namespace spqr
