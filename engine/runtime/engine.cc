#include "engine/runtime/engine.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <deque>
#include <limits>
#include <mutex>
#include <optional>
#include <random>
#include <span>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/kv/block_allocator.h"
#include "engine/runtime/detokenizer.h"
#include "engine/runtime/scheduler.h"
#include "engine/sampler/sampler.h"
#include "engine/util/status_macros.h"

namespace spqr {
namespace {

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

// Index of the first NaN or +-Inf among `n` values, -1 when all are finite.
int64_t FirstNonFinite(const float* values, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    if (!std::isfinite(values[i])) return i;
  }
  return -1;
}

}  // namespace

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

int32_t Engine::Impl::CacheableBlocks(const Sequence& seq) const {
  if (!options_.enable_prefix_caching || seq.request.prompt_logprobs) return 0;
  return (seq.prompt_len - 1) / options_.kv_block_size;
}

void Engine::Impl::MatchPrefixes() {
  for (auto& s : waiting_) s->prefix_match = PrefixMatch();
  if (!options_.enable_prefix_caching) return;
  // Only the requests at the head of the admission order can be admitted this step (at most the
  // free running slots), so only they are looked up.
  const int64_t slots = options_.max_running_requests - static_cast<int64_t>(running_.size());
  if (slots <= 0) return;
  std::vector<Sequence*> order;
  for (auto& s : waiting_) order.push_back(s.get());
  std::stable_sort(order.begin(), order.end(), [](const Sequence* a, const Sequence* b) {
    if (a->request.priority != b->request.priority) {
      return a->request.priority > b->request.priority;
    }
    return a->arrival < b->arrival;
  });
  if (static_cast<int64_t>(order.size()) > slots) order.resize(slots);
  for (Sequence* s : order) {
    const int32_t max_blocks = CacheableBlocks(*s);
    if (max_blocks > 0) s->prefix_match = allocator_.MatchPrefix(s->tokens, max_blocks);
  }
}

bool Engine::Impl::Step() {
  MatchPrefixes();
  std::vector<WaitingSequence> waiting;
  waiting.reserve(waiting_.size());
  for (const auto& s : waiting_) {
    WaitingSequence w;
    w.id = s->uid;
    w.priority = s->request.priority;
    w.arrival = s->arrival;
    w.prompt_tokens = s->prompt_len;
    w.max_new_tokens = s->request.stopping.max_new_tokens;
    w.cached_tokens = static_cast<int32_t>(s->prefix_match.blocks.size()) * options_.kv_block_size;
    w.cached_evictable_blocks = s->prefix_match.evictable;
    waiting.push_back(w);
  }
  std::vector<RunningSequence> running;
  running.reserve(running_.size());
  for (const auto& s : running_) {
    running.push_back({s->uid, s->request.priority, s->arrival, s->num_computed,
                       static_cast<int32_t>(s->tokens.size())});
  }
  SchedulerConfig config;
  config.block_size = options_.kv_block_size;
  config.max_batched_tokens = options_.max_batched_tokens;
  config.max_running_requests = options_.max_running_requests;
  const SchedulePlan plan = Schedule(waiting, running, allocator_.num_free_blocks(), config);
  if (plan.scheduled.empty()) return false;

  std::unordered_map<int64_t, Sequence*> by_uid;
  for (auto& s : running_) by_uid[s->uid] = s.get();
  const absl::Time now = absl::Now();
  int32_t admitted = 0;
  int64_t admitted_prompt_tokens = 0, cache_queries = 0, cache_hits = 0;
  // Every admitted request first takes references on its cached prefix, so that no other
  // admission's Reserve can evict those blocks; then each reserves its new blocks.
  for (const ScheduledSequence& sch : plan.scheduled) {
    if (!sch.newly_admitted) continue;
    auto it = std::find_if(waiting_.begin(), waiting_.end(),
                           [&](const auto& s) { return s->uid == sch.id; });
    Sequence* seq = it->get();
    cache_queries += CacheableBlocks(*seq);
    if (!allocator_.AcquirePrefix(seq->uid, seq->prefix_match).ok()) {
      seq->prefix_match = PrefixMatch();  // cannot happen (nothing changed since the lookup)
    }
    const int32_t cached =
        static_cast<int32_t>(seq->prefix_match.blocks.size()) * options_.kv_block_size;
    cache_hits += static_cast<int64_t>(seq->prefix_match.blocks.size());
    seq->num_computed = cached;
    seq->cached_prompt_tokens = cached;
    seq->prefix_match = PrefixMatch();
  }
  for (const ScheduledSequence& sch : plan.scheduled) {
    if (!sch.newly_admitted) continue;
    auto it = std::find_if(waiting_.begin(), waiting_.end(),
                           [&](const auto& s) { return s->uid == sch.id; });
    Sequence* seq = it->get();
    const absl::Status reserved = allocator_.Reserve(
        seq->uid, static_cast<int64_t>(seq->prompt_len) + seq->request.stopping.max_new_tokens);
    // The scheduler only admits what fits in the free blocks it was given.
    if (!reserved.ok()) {
      Finish(*seq, FinishReason::kError, OutputChunk(), reserved);
      continue;
    }
    seq->scheduled_time = now;
    running_.push_back(std::move(*it));
    waiting_.erase(it);
    by_uid[seq->uid] = seq;
    ++admitted;
    admitted_prompt_tokens += seq->prompt_len;
  }
  if (admitted > 0) {
    std::lock_guard<std::mutex> lock(mu_);
    queued_requests_ -= admitted;
    queued_prompt_tokens_ -= admitted_prompt_tokens;
  }
  {
    std::lock_guard<std::mutex> lock(stats_mu_);
    stats_.prompt_tokens_total += admitted_prompt_tokens;
    stats_.prefix_cache_queries_total += cache_queries;
    stats_.prefix_cache_hits_total += cache_hits;
  }

  struct Item {
    Sequence* seq;
    int32_t start;
    int32_t count;
    int32_t num_logits;
  };
  std::vector<Item> items;
  StepPlan step;
  // Rows of prompt logits scoring requests may still use this step (max_step_logits_bytes).
  int64_t prompt_logit_rows_left =
      std::max<int64_t>(1, options_.max_step_logits_bytes / (int64_t{vocab_size_} * 4));
  for (const ScheduledSequence& sch : plan.scheduled) {
    auto it = by_uid.find(sch.id);
    if (it == by_uid.end() || it->second->finished) continue;
    Sequence* seq = it->second;
    int32_t count = sch.num_tokens;
    const bool scoring = seq->request.prompt_logprobs && seq->prefilling();
    if (scoring) {
      // Every position of the chunk needs its logits: cut the chunk to what the budget holds;
      // the rest of the prompt is prefilled in later steps.
      count = static_cast<int32_t>(std::min<int64_t>(count, prompt_logit_rows_left));
      if (count == 0) continue;
      prompt_logit_rows_left -= count;
    }
    const bool reaches_end = seq->num_computed + count == static_cast<int32_t>(seq->tokens.size());
    const bool wants_token = seq->completion_tokens() < seq->request.stopping.max_new_tokens;
    int32_t num_logits = reaches_end && wants_token ? 1 : 0;
    // Scoring: the logits of every prompt position give the next prompt token's logprob.
    if (scoring) num_logits = count;
    items.push_back({seq, seq->num_computed, count, num_logits});
    SequenceStep s;
    s.tokens = std::span<const int32_t>(seq->tokens).subspan(seq->num_computed, count);
    s.start_pos = seq->num_computed;
    s.block_table = allocator_.BlockTable(seq->uid);
    s.num_logits = num_logits;
    step.seqs.push_back(s);
  }
  if (items.empty()) return false;

  StepRecord record;
  record.sequences = static_cast<int32_t>(items.size());
  for (const Item& item : items) {
    // A decode feeds back the one generated token that is not in the KV cache yet; anything
    // else (prompt chunks, recomputation after a preemption) is prefill work.
    const bool decode = item.count == 1 && item.start >= item.seq->prompt_len &&
                        item.start + 1 == static_cast<int32_t>(item.seq->tokens.size());
    (decode ? record.decode_tokens : record.prefill_tokens) += item.count;
  }
  const absl::Time forward_start = absl::Now();
  // Reports the step however Step() returns from here on.
  struct ReportStep {
    const EngineOptions& options;
    StepRecord& record;
    absl::Time start;
    ~ReportStep() {
      if (!options.step_observer) return;
      record.seconds = absl::ToDoubleSeconds(absl::Now() - start);
      options.step_observer(record);
    }
  } report{options_, record, forward_start};

  StepOutput out;
  const absl::Status forward = model_->backend->Forward(step, &out);
  record.ok = forward.ok();
  {
    std::lock_guard<std::mutex> lock(stats_mu_);
    ++stats_.steps_total;
  }
  if (!forward.ok()) {
    for (Item& item : items) {
      Finish(*item.seq, FinishReason::kError, OutputChunk(),
             absl::Status(forward.code(), absl::StrCat("forward step: ", forward.message())));
    }
    return true;
  }

  size_t total_rows = 0;
  for (const Item& item : items) total_rows += item.num_logits;
  // A backend that returns too few logits would make the rows below read out of bounds.
  if (out.logits.size() != total_rows * vocab_size_ ||
      (total_rows > 0 && out.vocab_size != vocab_size_)) {
    record.ok = false;
    for (Item& item : items) {
      Finish(*item.seq, FinishReason::kError, OutputChunk(),
             absl::InternalError(absl::StrCat(
                 "forward step: the backend returned ", out.logits.size(), " logits of vocab_size ",
                 out.vocab_size, ", expected ", total_rows, " rows of ", vocab_size_)));
    }
    return true;
  }

  size_t row = 0;
  for (Item& item : items) {
    Sequence& seq = *item.seq;
    const size_t first_row = row;
    row += item.num_logits;
    // Second line behind the load-time weight check: a NaN/Inf logit (an overflow in the model
    // or a backend fault) would make sampling and logprobs meaningless. The request fails and
    // this step's KV blocks of it are not offered to the prefix cache (they may hold the fault).
    const int64_t bad =
        item.num_logits > 0
            ? FirstNonFinite(out.row(first_row), int64_t{item.num_logits} * out.vocab_size)
            : -1;
    if (bad >= 0) {
      const int32_t pos =
          item.start + item.count - item.num_logits + static_cast<int32_t>(bad / out.vocab_size);
      {
        std::lock_guard<std::mutex> lock(stats_mu_);
        ++stats_.nonfinite_logits_failures_total;
      }
      Finish(seq, FinishReason::kError, OutputChunk(),
             absl::InternalError(absl::StrCat(
                 "the model produced a non-finite logit (",
                 out.logits[first_row * out.vocab_size + bad], ") after position ", pos,
                 " for vocabulary entry ", bad % out.vocab_size,
                 "; the request was stopped instead of sampling from it (a numerical fault in the "
                 "model or the backend, not in the request)")));
      continue;
    }
    seq.num_computed += item.count;
    // Full blocks written by now become reusable by later requests with the same prefix.
    allocator_.CacheFullBlocks(seq.uid, seq.tokens, seq.num_computed);
    if (seq.request.prompt_logprobs && item.start < seq.prompt_len) {
      // Row i holds the logits at position start + (count - num_logits) + i, which predict the
      // token after it.
      for (int32_t i = 0; i < item.num_logits; ++i) {
        const int32_t pos = item.start + item.count - item.num_logits + i;
        if (pos + 1 >= seq.prompt_len) break;
        seq.prompt_logprobs.push_back(
            ComputeTokenLogprob(std::span<const float>(out.row(first_row + i), out.vocab_size),
                                seq.tokens[pos + 1], seq.request.top_logprobs));
      }
    }
    if (seq.num_computed < static_cast<int32_t>(seq.tokens.size())) continue;  // mid-prefill
    if (seq.completion_tokens() >= seq.request.stopping.max_new_tokens) {
      Finish(seq, FinishReason::kLength, OutputChunk());  // scoring only: max_new_tokens = 0
      continue;
    }
    SampleAndEmit(seq, out.row(row - 1), OutputChunk());
  }
  return true;
}

void Engine::Impl::SampleAndEmit(Sequence& seq, const float* row, OutputChunk chunk) {
  const GenerateRequest& req = seq.request;
  const int32_t before = seq.completion_tokens();
  const bool before_min = before < req.stopping.min_new_tokens;
  SamplingHistory history;
  history.prompt_tokens = std::span<const int32_t>(seq.tokens).first(seq.prompt_len);
  history.generated_tokens = std::span<const int32_t>(seq.tokens).subspan(seq.prompt_len);
  if (before_min) history.banned_tokens = seq.banned_before_min;
  const SampleResult sampled =
      sampler_.Sample(std::span<const float>(row, vocab_size_), req.sampling, history, &seq.rng,
                      req.logprobs, req.top_logprobs);
  const int32_t token = sampled.token_id;
  seq.tokens.push_back(token);
  const absl::Time now = absl::Now();
  if (!seq.first_token_time.has_value()) seq.first_token_time = now;
  {
    std::lock_guard<std::mutex> lock(stats_mu_);
    ++stats_.generation_tokens_total;
  }
  chunk.token_ids.push_back(token);
  if (req.logprobs) chunk.logprobs.push_back(sampled.logprob);

  const bool is_eos = std::find(eos_ids_.begin(), eos_ids_.end(), token) != eos_ids_.end();
  const auto& stop_ids = req.stopping.stop_token_ids;
  if (!before_min && is_eos && !req.stopping.ignore_eos) {
    chunk.stop_token_id = token;
    Finish(seq, FinishReason::kEos, std::move(chunk));
    return;
  }
  if (!before_min && std::find(stop_ids.begin(), stop_ids.end(), token) != stop_ids.end()) {
    chunk.stop_token_id = token;
    Finish(seq, FinishReason::kStopToken, std::move(chunk));
    return;
  }
  if (seq.detokenizer != nullptr) {
    const std::string delta = seq.detokenizer->Append(token);
    // Stop strings only look at text after the first min_new_tokens tokens.
    if (seq.completion_tokens() > req.stopping.min_new_tokens) {
      StopStringMatcher::Result matched = seq.stop_matcher->Push(delta);
      chunk.text += matched.text;
      if (matched.matched) {
        chunk.stop_string = matched.stop_string;
        Finish(seq, FinishReason::kStopString, std::move(chunk));
        return;
      }
    } else {
      chunk.text += delta;
    }
  }
  if (seq.completion_tokens() >= req.stopping.max_new_tokens) {
    Finish(seq, FinishReason::kLength, std::move(chunk));
    return;
  }
  Emit(seq, std::move(chunk));
}

void Engine::Impl::Emit(Sequence& seq, OutputChunk chunk) {
  if (!seq.sent_any_chunk && seq.request.prompt_logprobs) {
    chunk.prompt_logprobs = std::move(seq.prompt_logprobs);
    seq.prompt_logprobs.clear();
  }
  seq.sent_any_chunk = true;
  chunk.usage.prompt_tokens = seq.prompt_len;
  chunk.usage.completion_tokens = seq.completion_tokens();
  chunk.usage.cached_prompt_tokens = seq.cached_prompt_tokens;
  if (seq.callback) seq.callback(std::move(chunk));
}

void Engine::Impl::Finish(Sequence& seq, FinishReason reason, OutputChunk chunk,
                          absl::Status error) {
  if (seq.finished) return;
  seq.finished = true;
  // Release the text still held back (an unfinished character, a possible stop-string start),
  // except after a stop string (the rest is cut) or an error.
  if (reason != FinishReason::kStopString && reason != FinishReason::kError &&
      seq.detokenizer != nullptr) {
    std::string tail = seq.detokenizer->Flush();
    if (seq.completion_tokens() > seq.request.stopping.min_new_tokens) {
      StopStringMatcher::Result matched = seq.stop_matcher->Push(tail);
      chunk.text += matched.text;
      if (matched.matched && reason == FinishReason::kLength) {
        reason = FinishReason::kStopString;
        chunk.stop_string = matched.stop_string;
      } else if (!matched.matched) {
        chunk.text += seq.stop_matcher->Flush();
      }
    } else {
      chunk.text += tail;
    }
  }
  const absl::Time now = absl::Now();
  chunk.finished = true;
  chunk.finish_reason = reason;
  chunk.error = std::move(error);
  chunk.timings.e2e = now - seq.submit_time;
  // A request that never left the queue spent its whole life there.
  chunk.timings.queue_time =
      (seq.scheduled_time.has_value() ? *seq.scheduled_time : now) - seq.submit_time;
  if (seq.first_token_time.has_value()) {
    chunk.timings.time_to_first_token = *seq.first_token_time - seq.submit_time;
  }
  if (allocator_.HasSequence(seq.uid)) (void)allocator_.FreeSequence(seq.uid);
  {
    std::lock_guard<std::mutex> lock(mu_);
    live_ids_.erase(seq.request.request_id);
    if (!seq.scheduled_time.has_value()) {  // never admitted: it leaves the waiting queue
      --queued_requests_;
      queued_prompt_tokens_ -= seq.prompt_len;
    }
  }
  Emit(seq, std::move(chunk));
}

void Engine::Impl::RemoveFinished() {
  for (auto* group : {&waiting_, &running_}) {
    group->erase(
        std::remove_if(group->begin(), group->end(), [](const auto& s) { return s->finished; }),
        group->end());
  }
}

void Engine::Impl::PublishStats(double step_seconds) {
  std::lock_guard<std::mutex> lock(stats_mu_);
  stats_.running_requests = static_cast<int32_t>(running_.size());
  stats_.kv_blocks_free = allocator_.num_free_blocks();
  stats_.kv_blocks_cached = allocator_.num_evictable_blocks();
  if (step_seconds >= 0) stats_.last_step_seconds = step_seconds;
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

  // Warm-up: one token through the whole model proves the weights and the pool work before the
  // server reports ready. Block 0 is overwritten by the first real sequence that uses it.
  const int32_t warmup_token = model->config.bos_token_id >= 0 ? model->config.bos_token_id : 0;
  const int32_t warmup_block = 0;
  StepPlan warmup;
  warmup.seqs.push_back({std::span<const int32_t>(&warmup_token, 1), 0,
                         std::span<const int32_t>(&warmup_block, 1), 1});
  StepOutput out;
  if (absl::Status s = backend.Forward(warmup, &out); !s.ok()) {
    return absl::Status(s.code(), absl::StrCat("warm-up forward pass: ", s.message()));
  }
  if (out.vocab_size <= 0 || out.logits.size() != static_cast<size_t>(out.vocab_size)) {
    return absl::InternalError(absl::StrCat("warm-up forward pass returned ", out.logits.size(),
                                            " logits for vocab_size ", out.vocab_size));
  }
  if (const int64_t bad = FirstNonFinite(out.logits.data(), out.vocab_size); bad >= 0) {
    return absl::InternalError(absl::StrCat("warm-up forward pass produced a non-finite logit (",
                                            out.logits[bad], ") for vocabulary entry ", bad,
                                            "; the model cannot be served"));
  }
  auto impl = std::make_unique<Impl>(std::move(model), options, shape.num_blocks, out.vocab_size);
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
const LoadedModel& Engine::model() const { return *impl_->model_; }
const EngineOptions& Engine::options() const { return impl_->options_; }

}  // namespace spqr
