// Engine::Impl::Step and what it calls: prefix-cache lookup and admission of the scheduled
// requests, the batched forward pass, the non-finite logit check, prompt logprobs, sampling,
// emitting chunks and finishing sequences.
#include <algorithm>
#include <mutex>
#include <span>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "engine/runtime/engine_impl.h"
#include "engine/runtime/finite_check.h"
#include "engine/runtime/scheduler.h"

namespace spqr {

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
    // Health first: a client that sees its request fail and then asks the server's health must
    // already find the fault (and the engine must refuse new work) — not race the report.
    CheckBackendHealth();
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

void Engine::Impl::CheckBackendHealth() {
  absl::Status health = model_->backend->health();
  if (health.ok()) return;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!fault_.ok()) return;
    fault_ = health;
    accepting_ = false;
  }
  if (options_.on_backend_fault) options_.on_backend_fault(health);
}

}  // namespace spqr
