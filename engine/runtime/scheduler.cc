#include "engine/runtime/scheduler.h"

#include <algorithm>

#include "engine/kv/block_allocator.h"

namespace spqr {
namespace {

template <typename T>
bool RunsBefore(const T& a, const T& b) {
  if (a.priority != b.priority) return a.priority > b.priority;
  return a.arrival < b.arrival;
}

}  // namespace

int32_t ReservedBlocks(int32_t prompt_tokens, int32_t max_new_tokens, int32_t block_size) {
  return BlocksForTokens(static_cast<int64_t>(prompt_tokens) + max_new_tokens, block_size);
}

SchedulePlan Schedule(const std::vector<WaitingSequence>& waiting,
                      const std::vector<RunningSequence>& running, int32_t free_blocks,
                      const SchedulerConfig& config) {
  SchedulePlan plan;
  int32_t budget = config.max_batched_tokens;

  // Running sequences: decodes (one token each) first, they are latency-critical and cheap;
  // then prefills that earlier steps cut short.
  std::vector<const RunningSequence*> decodes, prefills;
  for (const RunningSequence& r : running) {
    const int32_t pending = r.num_tokens - r.num_computed;
    if (pending <= 0) continue;  // nothing to compute (a finished sequence not yet removed)
    (pending == 1 ? decodes : prefills).push_back(&r);
  }
  auto by_order = [](const RunningSequence* a, const RunningSequence* b) {
    return RunsBefore(*a, *b);
  };
  std::stable_sort(decodes.begin(), decodes.end(), by_order);
  std::stable_sort(prefills.begin(), prefills.end(), by_order);
  for (const auto* group : {&decodes, &prefills}) {
    for (const RunningSequence* r : *group) {
      const int32_t pending = r->num_tokens - r->num_computed;
      const int32_t take = std::min(pending, budget);
      if (take <= 0) {
        plan.idle.push_back(r->id);
        continue;
      }
      plan.scheduled.push_back({r->id, take, false, 0});
      budget -= take;
    }
  }

  // Admission: strict priority/FCFS order with up-front block reservation.
  std::vector<const WaitingSequence*> queue;
  for (const WaitingSequence& w : waiting) queue.push_back(&w);
  std::stable_sort(
      queue.begin(), queue.end(),
      [](const WaitingSequence* a, const WaitingSequence* b) { return RunsBefore(*a, *b); });
  int32_t num_running = static_cast<int32_t>(running.size());
  bool blocked = false;
  for (const WaitingSequence* w : queue) {
    const int32_t cached_blocks = w->cached_tokens / config.block_size;
    const int32_t blocks =
        ReservedBlocks(w->prompt_tokens, w->max_new_tokens, config.block_size) - cached_blocks;
    const int32_t cost = blocks + w->cached_evictable_blocks;  // free blocks it takes
    if (!blocked &&
        (budget <= 0 || num_running >= config.max_running_requests || cost > free_blocks)) {
      blocked = true;
    }
    if (blocked) {
      plan.waiting.push_back(w->id);
      continue;
    }
    const int32_t take = std::min(w->prompt_tokens - cached_blocks * config.block_size, budget);
    plan.scheduled.push_back({w->id, take, true, blocks});
    budget -= take;
    free_blocks -= cost;
    plan.blocks_reserved += cost;
    ++num_running;
  }
  plan.num_batched_tokens = config.max_batched_tokens - budget;
  return plan;
}

}  // namespace spqr
