// Engine: request validation and submission, cancellation, the engine thread's loop, shutdown,
// and Engine::Create (KV pool sizing and the start-up warm-up, warmup.h). One step of the loop is
// in engine_step.cc.
#include "engine/runtime/engine.h"

#include <algorithm>
#include <chrono>
#include <limits>
#include <mutex>
#include <random>
#include <thread>
#include <unordered_set>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "engine/runtime/engine_impl.h"
#include "engine/runtime/scheduler.h"
#include "engine/runtime/warmup.h"
#include "engine/util/status_macros.h"

namespace spqr {

absl::Status Engine::Impl::Validate(const GenerateRequest& r) const {
  const auto& s = r.sampling;
  const auto& st = r.stopping;
  if (r.request_id.empty()) return absl::InvalidArgumentError("request_id is empty");
  if (r.prompt_tokens.empty()) return absl::InvalidArgumentError("prompt is empty (0 tokens)");
  for (size_t i = 0; i < r.prompt_tokens.size(); ++i) {
    const int32_t t = r.prompt_tokens[i];
    if (t < 0 || t >= vocab_size_) {
      return absl::InvalidArgumentError(absl::StrCat(
          "prompt token ", i, " has id ", t, ", outside the vocabulary [0, ", vocab_size_, ")"));
    }
  }
  for (int32_t t : st.stop_token_ids) {
    if (t < 0 || t >= vocab_size_) {
      return absl::InvalidArgumentError(absl::StrCat(
          "stop_token_ids has id ", t, ", outside the vocabulary [0, ", vocab_size_, ")"));
    }
  }
  if (st.max_new_tokens < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_new_tokens is ", st.max_new_tokens, "; it must be >= 0"));
  }
  if (st.min_new_tokens < 0 || st.min_new_tokens > st.max_new_tokens) {
    return absl::InvalidArgumentError(
        absl::StrCat("min_new_tokens is ", st.min_new_tokens,
                     "; it must be in [0, max_new_tokens = ", st.max_new_tokens, "]"));
  }
  const int64_t context = model_->config.max_position_embeddings;
  const int64_t total = static_cast<int64_t>(r.prompt_tokens.size()) + st.max_new_tokens;
  if (context > 0 && total > context) {
    return absl::InvalidArgumentError(absl::StrCat(
        "prompt (", r.prompt_tokens.size(), " tokens) + max_new_tokens (", st.max_new_tokens,
        ") = ", total, " exceeds the model's context of ", context, " tokens"));
  }
  const int32_t blocks = ReservedBlocks(static_cast<int32_t>(r.prompt_tokens.size()),
                                        st.max_new_tokens, options_.kv_block_size);
  if (blocks > num_blocks_) {
    return absl::InvalidArgumentError(
        absl::StrCat("prompt (", r.prompt_tokens.size(), " tokens) + max_new_tokens (",
                     st.max_new_tokens, ") needs ", blocks, " KV blocks of ",
                     options_.kv_block_size, " tokens but the whole KV cache has ", num_blocks_));
  }
  if (!(s.temperature >= 0.0f)) {
    return absl::InvalidArgumentError(
        absl::StrCat("temperature is ", s.temperature, "; it must be >= 0"));
  }
  if (s.top_k < 0) {
    return absl::InvalidArgumentError(absl::StrCat("top_k is ", s.top_k, "; it must be >= 0"));
  }
  if (!(s.top_p > 0.0f && s.top_p <= 1.0f)) {
    return absl::InvalidArgumentError(absl::StrCat("top_p is ", s.top_p, "; it must be in (0, 1]"));
  }
  if (!(s.min_p >= 0.0f && s.min_p <= 1.0f)) {
    return absl::InvalidArgumentError(absl::StrCat("min_p is ", s.min_p, "; it must be in [0, 1]"));
  }
  if (!(s.repetition_penalty > 0.0f)) {
    return absl::InvalidArgumentError(
        absl::StrCat("repetition_penalty is ", s.repetition_penalty, "; it must be > 0"));
  }
  if (r.top_logprobs < 0 || r.top_logprobs > vocab_size_) {
    return absl::InvalidArgumentError(
        absl::StrCat("top_logprobs is ", r.top_logprobs, "; it must be in [0, ", vocab_size_, "]"));
  }
  if (!r.stopping.stop_strings.empty() && !decode_) {
    return absl::InvalidArgumentError(
        "stop_strings need a tokenizer and this model was loaded without one");
  }
  return absl::OkStatus();
}

absl::Status Engine::Impl::Submit(GenerateRequest request, OutputCallback callback) {
  RETURN_IF_ERROR(Validate(request));
  auto seq = std::make_unique<Sequence>();
  seq->submit_time = absl::Now();
  seq->prompt_len = static_cast<int32_t>(request.prompt_tokens.size());
  seq->tokens = request.prompt_tokens;
  seq->rng.seed =
      request.sampling.seed.has_value()
          ? *request.sampling.seed
          : (static_cast<uint64_t>(std::random_device{}()) << 32) ^ std::random_device{}();
  if (decode_) {
    seq->detokenizer = std::make_unique<IncrementalDetokenizer>(decode_, request.prompt_tokens);
  }
  seq->stop_matcher = std::make_unique<StopStringMatcher>(request.stopping.stop_strings);
  if (!request.stopping.ignore_eos) seq->banned_before_min = eos_ids_;
  for (int32_t t : request.stopping.stop_token_ids) seq->banned_before_min.push_back(t);
  seq->callback = std::move(callback);
  seq->request = std::move(request);

  std::lock_guard<std::mutex> lock(mu_);
  if (!fault_.ok()) {
    return absl::UnavailableError(absl::StrCat(
        "the backend failed and this server serves no more requests: ", fault_.message()));
  }
  if (!accepting_) {
    return absl::UnavailableError("the engine is shutting down and accepts no new requests");
  }
  if (live_ids_.count(seq->request.request_id) != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("request_id \"", seq->request.request_id, "\" is already in use"));
  }
  if (queued_requests_ >= options_.max_queued_requests) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the waiting queue is full (", queued_requests_, " of ",
                     options_.max_queued_requests, " requests); retry later"));
  }
  if (queued_prompt_tokens_ + seq->prompt_len > options_.max_queued_prompt_tokens) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the waiting queue holds ", queued_prompt_tokens_, " prompt tokens; ", seq->prompt_len,
        " more would pass the limit of ", options_.max_queued_prompt_tokens, "; retry later"));
  }
  seq->arrival = next_arrival_++;
  seq->uid = seq->arrival;
  live_ids_.emplace(seq->request.request_id, seq->uid);
  ++queued_requests_;
  queued_prompt_tokens_ += seq->prompt_len;
  incoming_.push_back(std::move(seq));
  cv_.notify_one();
  return absl::OkStatus();
}

void Engine::Impl::Loop() {
  while (true) {
    std::vector<int64_t> cancels;
    bool stop = false;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [this] {
        return stopping_ || !incoming_.empty() || !cancels_.empty() || has_work_;
      });
      while (!incoming_.empty()) {
        waiting_.push_back(std::move(incoming_.front()));
        incoming_.pop_front();
      }
      cancels.swap(cancels_);
      stop = stopping_;
    }
    if (stop) break;
    HandleCancels(cancels);
    ExpireDeadlines(absl::Now());
    const absl::Time step_start = absl::Now();
    const bool ran = Step();
    RemoveFinished();
    PublishStats(ran ? absl::ToDoubleSeconds(absl::Now() - step_start) : -1.0);
    {
      std::lock_guard<std::mutex> lock(mu_);
      has_work_ = !waiting_.empty() || !running_.empty();
    }
    if (!ran && (!waiting_.empty() || !running_.empty())) {
      // The scheduler guarantees progress whenever there is work; this only guards against a
      // busy loop should that ever break.
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  }
  // Shutdown: everything still live ends as cancelled.
  {
    std::lock_guard<std::mutex> lock(mu_);
    while (!incoming_.empty()) {
      waiting_.push_back(std::move(incoming_.front()));
      incoming_.pop_front();
    }
  }
  for (auto* group : {&waiting_, &running_}) {
    for (auto& seq : *group) Finish(*seq, FinishReason::kCancelled, OutputChunk());
  }
  RemoveFinished();
  PublishStats(-1.0);
}

void Engine::Impl::HandleCancels(const std::vector<int64_t>& uids) {
  if (uids.empty()) return;
  const std::unordered_set<int64_t> wanted(uids.begin(), uids.end());
  for (auto* group : {&waiting_, &running_}) {
    for (auto& seq : *group) {
      if (!seq->finished && wanted.count(seq->uid) != 0) {
        Finish(*seq, FinishReason::kCancelled, OutputChunk());
      }
    }
  }
  RemoveFinished();
}

void Engine::Impl::ExpireDeadlines(absl::Time now) {
  for (auto* group : {&waiting_, &running_}) {
    for (auto& seq : *group) {
      if (!seq->finished && seq->request.deadline.has_value() && *seq->request.deadline <= now) {
        Finish(*seq, FinishReason::kDeadline, OutputChunk());
      }
    }
  }
  RemoveFinished();
}

// --- Engine ------------------------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(std::unique_ptr<LoadedModel> model,
                                                       const EngineOptions& options) {
  if (model == nullptr || model->backend == nullptr) {
    return absl::InvalidArgumentError("Engine::Create: the model has no backend");
  }
  if (options.kv_block_size <= 0 || options.max_running_requests <= 0 ||
      options.max_batched_tokens <= 0 || options.max_queued_requests <= 0 ||
      options.max_queued_prompt_tokens <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "engine options must be positive: kv_block_size=", options.kv_block_size,
        " max_running_requests=", options.max_running_requests, " max_batched_tokens=",
        options.max_batched_tokens, " max_queued_requests=", options.max_queued_requests,
        " max_queued_prompt_tokens=", options.max_queued_prompt_tokens));
  }
  Backend& backend = *model->backend;
  const int64_t block_bytes = backend.KvBytesPerToken() * options.kv_block_size;
  if (block_bytes <= 0) {
    return absl::InternalError(absl::StrCat("backend ", backend.name(), " reports ",
                                            backend.KvBytesPerToken(), " KV bytes per token"));
  }
  const int64_t num_blocks = options.kv_cache_bytes / block_bytes;
  if (num_blocks < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("kv_cache_bytes (", options.kv_cache_bytes, ") is less than one KV block (",
                     options.kv_block_size, " tokens x ", backend.KvBytesPerToken(),
                     " bytes = ", block_bytes, " bytes)"));
  }
  if (num_blocks > std::numeric_limits<int32_t>::max()) {
    return absl::InvalidArgumentError(absl::StrCat("kv_cache_bytes (", options.kv_cache_bytes,
                                                   ") makes more than 2^31 KV blocks"));
  }
  KvPoolShape shape;
  shape.num_blocks = static_cast<int32_t>(num_blocks);
  shape.block_size = options.kv_block_size;
  if (absl::Status pool = backend.AllocateKvPool(shape); !pool.ok()) {
    return absl::Status(pool.code(), absl::StrCat("kv_cache_bytes (", options.kv_cache_bytes,
                                                  "): ", pool.message()));
  }

  // Warm-up: a short prefill and a few decode steps through the whole model prove the weights,
  // the kernels and the pool work before the server reports ready.
  absl::StatusOr<int32_t> vocab_size =
      RunWarmUp(backend, WarmUpPlanFor(model->config, shape), shape);
  if (!vocab_size.ok()) return vocab_size.status();
  auto impl = std::make_unique<Impl>(std::move(model), options, shape.num_blocks, *vocab_size);
  impl->Start();
  return std::unique_ptr<Engine>(new Engine(std::move(impl)));
}

Engine::Engine(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Engine::~Engine() = default;

absl::Status Engine::Submit(GenerateRequest request, OutputCallback callback) {
  return impl_->Submit(std::move(request), std::move(callback));
}
void Engine::Cancel(const std::string& request_id) { impl_->Cancel(request_id); }
void Engine::StopAccepting() { impl_->StopAccepting(); }
EngineStats Engine::GetStats() const { return impl_->GetStats(); }
absl::Status Engine::health() const { return impl_->health(); }
const LoadedModel& Engine::model() const { return *impl_->model_; }
const EngineOptions& Engine::options() const { return impl_->options_; }

}  // namespace spqr
