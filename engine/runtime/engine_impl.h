// Engine::Impl, the engine loop's state, and Sequence, one request on the engine thread. Internal
// to engine/runtime: engine.cc holds submission, the loop and Engine::Create; engine_step.cc one
// scheduled step (admission, the forward pass, sampling, emitting and finishing).
#pragma once

#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/time/time.h"
#include "engine/kv/block_allocator.h"
#include "engine/runtime/detokenizer.h"
#include "engine/runtime/engine.h"
#include "engine/sampler/sampler.h"

namespace spqr {

// One request from Submit to its final chunk. Owned by the engine thread once queued.
struct Sequence {
  int64_t uid = 0;      // KV block-table key
  int64_t arrival = 0;  // submission order
  GenerateRequest request;
  OutputCallback callback;
  std::vector<int32_t> tokens;  // prompt, then generated tokens
  int32_t prompt_len = 0;
  int32_t num_computed = 0;          // tokens whose keys/values are in the KV cache
  int32_t cached_prompt_tokens = 0;  // prompt tokens reused from the prefix cache
  PrefixMatch prefix_match;          // while waiting: this step's cached prefix of the prompt
  SamplerRng rng;
  std::unique_ptr<IncrementalDetokenizer> detokenizer;  // null without a tokenizer
  std::unique_ptr<StopStringMatcher> stop_matcher;
  std::vector<int32_t> banned_before_min;  // eos (unless ignored) and stop token ids
  std::vector<TokenLogprob> prompt_logprobs;
  bool sent_any_chunk = false;
  bool finished = false;
  absl::Time submit_time;
  std::optional<absl::Time> scheduled_time;
  std::optional<absl::Time> first_token_time;

  int32_t completion_tokens() const { return static_cast<int32_t>(tokens.size()) - prompt_len; }
  bool prefilling() const { return num_computed < prompt_len; }
};

class Engine::Impl {
 public:
  Impl(std::unique_ptr<LoadedModel> model, const EngineOptions& options, int32_t num_blocks,
       int32_t vocab_size)
      : model_(std::move(model)),
        options_(options),
        vocab_size_(vocab_size),
        num_blocks_(num_blocks),
        allocator_(num_blocks, options.kv_block_size, options.enable_prefix_caching) {
    if (model_->tokenizer != nullptr) {
      eos_ids_ = model_->tokenizer->eos_ids();
      const Tokenizer* tokenizer = model_->tokenizer.get();
      decode_ = [tokenizer](std::span<const int32_t> ids) {
        return tokenizer->Decode(std::vector<int32_t>(ids.begin(), ids.end()));
      };
    } else {
      eos_ids_ = model_->config.eos_token_ids;
    }
    stats_.kv_blocks_total = num_blocks;
    stats_.kv_blocks_free = num_blocks;
    stats_.kv_block_size = options.kv_block_size;
  }

  ~Impl() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
      accepting_ = false;
      cv_.notify_one();
    }
    if (thread_.joinable()) thread_.join();
  }

  void Start() {
    thread_ = std::thread([this] { Loop(); });
  }

  absl::Status Submit(GenerateRequest request, OutputCallback callback);
  void Cancel(const std::string& request_id) {
    std::lock_guard<std::mutex> lock(mu_);
    // Resolved to the sequence now, so that a late cancel can never hit a newer request that
    // reuses the id.
    auto it = live_ids_.find(request_id);
    if (it == live_ids_.end()) return;
    cancels_.push_back(it->second);
    cv_.notify_one();
  }
  void StopAccepting() {
    std::lock_guard<std::mutex> lock(mu_);
    accepting_ = false;
  }
  absl::Status health() const {
    std::lock_guard<std::mutex> lock(mu_);
    return fault_;
  }
  EngineStats GetStats() const {
    EngineStats stats;
    {
      std::lock_guard<std::mutex> lock(stats_mu_);
      stats = stats_;
    }
    std::lock_guard<std::mutex> lock(mu_);
    stats.waiting_requests = queued_requests_;
    return stats;
  }

  std::unique_ptr<LoadedModel> model_;
  EngineOptions options_;

 private:
  absl::Status Validate(const GenerateRequest& request) const;
  void Loop();
  // Runs one scheduled step; false when there was nothing to run.
  bool Step();
  void HandleCancels(const std::vector<int64_t>& uids);
  void ExpireDeadlines(absl::Time now);
  // Samples the next token of `seq` from `row` and emits its chunk (finishing it if a stopping
  // rule fires).
  void SampleAndEmit(Sequence& seq, const float* row, OutputChunk chunk);
  // Appends the final text, sends the last chunk, frees the sequence's blocks.
  void Finish(Sequence& seq, FinishReason reason, OutputChunk chunk,
              absl::Status error = absl::OkStatus());
  void Emit(Sequence& seq, OutputChunk chunk);
  void RemoveFinished();
  void PublishStats(double step_seconds);
  // After a failed step: if the backend reports itself broken, stop accepting requests, remember
  // the fault and tell the owner (EngineOptions::on_backend_fault), once.
  void CheckBackendHealth();
  // Prompt blocks a request may take from the prefix cache: full blocks, never the last prompt
  // token (its logits must be computed), and none for prompt_logprobs requests (every prompt
  // position's logits are needed).
  int32_t CacheableBlocks(const Sequence& seq) const;
  // Looks up the cached prefix of the waiting requests that can be admitted this step.
  void MatchPrefixes();

  const int32_t vocab_size_;
  const int32_t num_blocks_;
  std::vector<int32_t> eos_ids_;
  DecodeFn decode_;  // empty without a tokenizer: no text output

  // std primitives rather than absl::Mutex: ThreadSanitizer builds (SPQR_SANITIZER=thread) see
  // them without an instrumented Abseil. Guarded by mu_:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::unique_ptr<Sequence>> incoming_;
  std::vector<int64_t> cancels_;                       // sequence uids
  std::unordered_map<std::string, int64_t> live_ids_;  // request_id -> uid
  bool accepting_ = true;
  bool stopping_ = false;
  absl::Status fault_;           // the backend's, once it broke
  bool has_work_ = false;        // waiting_ or running_ non-empty
  int32_t queued_requests_ = 0;  // submitted, not yet admitted
  int64_t queued_prompt_tokens_ = 0;
  int64_t next_arrival_ = 0;

  // Engine-thread state.
  BlockAllocator allocator_;
  Sampler sampler_;
  std::vector<std::unique_ptr<Sequence>> waiting_;
  std::vector<std::unique_ptr<Sequence>> running_;

  mutable std::mutex stats_mu_;
  EngineStats stats_;

  std::thread thread_;
};

}  // namespace spqr
