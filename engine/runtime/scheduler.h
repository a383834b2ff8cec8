// The step scheduler: a pure function from the engine's queues and free KV blocks to the next
// step's plan. Policy (docs/scheduling.md explains why):
//   - Memory: up-front reservation. A request is admitted only when blocks for
//     prompt + max_new_tokens tokens are free (minus the cached prefix blocks it shares), and they
//     stay reserved until it ends, so a running sequence never runs out of KV space and nothing is
//     ever preempted. A cached prefix also skips its tokens' prefill.
//   - Order: running sequences first (decodes, then unfinished prefills), then admission from the
//     waiting queue by priority (higher first) and arrival (earlier first). Admission is strict:
//     when the head of the queue does not fit, nobody behind it is admitted (no starvation of large
//     requests).
//   - Budgets: at most max_batched_tokens tokens per step (decode = 1 token; prefills are cut into
//     chunks that fill what is left: chunked prefill mixed with decode) and at most
//     max_running_requests sequences admitted at once.
#pragma once

#include <cstdint>
#include <vector>

namespace spqr {

struct SchedulerConfig {
  int32_t block_size = 16;
  int32_t max_batched_tokens = 2048;
  int32_t max_running_requests = 64;
};

struct WaitingSequence {
  int64_t id = 0;
  int32_t priority = 0;
  int64_t arrival = 0;  // monotonically increasing submission number
  int32_t prompt_tokens = 0;
  int32_t max_new_tokens = 0;
  // Prefix cache: the leading prompt tokens whose blocks are cached (a multiple of block_size,
  // less than prompt_tokens), and how many of those blocks nobody owns now. Those count among the
  // free blocks and stop being free once the request shares them.
  int32_t cached_tokens = 0;
  int32_t cached_evictable_blocks = 0;
};

// An admitted sequence. Its next step processes tokens [num_computed, num_tokens): the rest of the
// prompt while prefilling, the one newest token while decoding.
struct RunningSequence {
  int64_t id = 0;
  int32_t priority = 0;
  int64_t arrival = 0;
  int32_t num_computed = 0;  // tokens whose keys/values are in the cache
  int32_t num_tokens = 0;    // prompt + generated tokens known so far
};

struct ScheduledSequence {
  int64_t id = 0;
  int32_t num_tokens = 0;         // tokens to process this step, starting at num_computed
  bool newly_admitted = false;    // came from the waiting queue this step
  int32_t blocks_to_reserve = 0;  // for newly admitted: new blocks for prompt + max_new_tokens
                                  // (the cached prefix's blocks are shared, not reserved)
};

struct SchedulePlan {
  std::vector<ScheduledSequence> scheduled;  // step order: decodes, prefills, then admissions
  std::vector<int64_t> waiting;              // still waiting, in admission order
  std::vector<int64_t> idle;                 // running but not scheduled (token budget used up)
  int32_t num_batched_tokens = 0;
  int32_t blocks_reserved = 0;  // free blocks taken by this step's admissions (new blocks plus
                                // evictable cached blocks they now share)
};

// Blocks reserved for a request for its whole life: prompt + max_new_tokens tokens.
int32_t ReservedBlocks(int32_t prompt_tokens, int32_t max_new_tokens, int32_t block_size);

SchedulePlan Schedule(const std::vector<WaitingSequence>& waiting,
                      const std::vector<RunningSequence>& running, int32_t free_blocks,
                      const SchedulerConfig& config);

}  // namespace spqr
