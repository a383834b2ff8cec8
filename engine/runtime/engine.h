// The engine: owns a loaded model and one engine thread that holds all mutable state (requests,
// KV blocks, the batch). Callers submit requests and receive chunks through callbacks.
//
// Thread safety: Submit/Cancel/GetStats may be called from any thread. Callbacks run on the
// engine thread and must not block.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/runtime/model.h"
#include "engine/runtime/request.h"

namespace spqr {

// What one engine step (a batched forward pass and the sampling after it) did, for step metrics.
struct StepRecord {
  double seconds = 0.0;        // backend forward + logprobs + sampling and chunk emission
  int32_t prefill_tokens = 0;  // prompt tokens (and tokens recomputed after a preemption)
  int32_t decode_tokens = 0;   // one per sequence that fed back its last generated token
  int32_t sequences = 0;       // sequences in the step
  bool ok = true;              // false when the backend's forward step failed
};

struct EngineOptions {
  int32_t kv_block_size = 16;
  int64_t kv_cache_bytes = 256ll << 20;  // KV pool budget
  int32_t max_running_requests = 64;     // sequences in one step
  int32_t max_batched_tokens = 2048;     // tokens per step (prefill chunks + decodes)
  int32_t max_queued_requests = 256;     // waiting queue bound -> RESOURCE_EXHAUSTED beyond
  int64_t max_queued_prompt_tokens = 1 << 20;
  // Reuse the KV blocks of earlier requests' identical full-block prompt prefixes
  // (docs/scheduling.md): the prefill starts after the cached prefix.
  bool enable_prefix_caching = true;
  // Most bytes of prompt logits (rows x vocab_size x 4) that scoring (prompt_logprobs) requests
  // may need in one step. Their prefill chunks are cut to fit (at least one token per step), so
  // a step's logits never grow with max_batched_tokens x vocabulary.
  int64_t max_step_logits_bytes = int64_t{256} << 20;
  // Called on the engine thread after every step that ran a forward pass (warm-up excluded),
  // failed ones included. It must be thread-safe with respect to its own state, fast, and must
  // not block or call back into the engine. Empty: no step records.
  std::function<void(const StepRecord&)> step_observer;
  // Called once, on the engine thread, when a failed step left the backend broken for good
  // (Backend::health(), e.g. a sticky CUDA error): from then on the engine refuses new requests
  // with UNAVAILABLE naming the fault, and every admitted one fails. The server turns its health
  // NOT_SERVING here. Same rules as step_observer.
  std::function<void(const absl::Status&)> on_backend_fault;
};

// Point-in-time counters for metrics and GetModelInfo. Cumulative counters only grow.
struct EngineStats {
  int32_t waiting_requests = 0;
  int32_t running_requests = 0;
  int32_t kv_blocks_total = 0;
  int32_t kv_blocks_free = 0;    // allocatable, including kv_blocks_cached
  int32_t kv_blocks_cached = 0;  // prefix-cache blocks nobody uses now (evicted on demand)
  int32_t kv_block_size = 0;
  int64_t prompt_tokens_total = 0;
  int64_t generation_tokens_total = 0;
  int64_t steps_total = 0;
  int64_t preemptions_total = 0;
  int64_t prefix_cache_queries_total = 0;  // cacheable prompt blocks of admitted requests
  int64_t prefix_cache_hits_total = 0;     // of which reused from the cache
  // Requests failed with INTERNAL because a step produced a NaN/Inf logit for them.
  int64_t nonfinite_logits_failures_total = 0;
  double last_step_seconds = 0.0;
};

class Engine {
 public:
  // Sizes and allocates the KV pool from options.kv_cache_bytes, runs the warm-up (warmup.h: a
  // short prefill and a few decode steps, every logit checked finite; its failure is the error,
  // naming the step) and starts the engine thread.
  static absl::StatusOr<std::unique_ptr<Engine>> Create(std::unique_ptr<LoadedModel> model,
                                                        const EngineOptions& options);
  // Stops the engine thread; unfinished requests get a final chunk with kCancelled.
  ~Engine();

  // Queues a request. Fails fast: INVALID_ARGUMENT (empty prompt, prompt + max_new_tokens over
  // the context, token id out of range, duplicate live request_id), RESOURCE_EXHAUSTED (queue
  // full), UNAVAILABLE (shutting down). On OK, `callback` receives every chunk, the last with
  // finished = true; on error it is never called.
  absl::Status Submit(GenerateRequest request, OutputCallback callback);
  // Finishes the request with kCancelled at the next step and frees its KV blocks. Unknown or
  // already finished ids are ignored.
  void Cancel(const std::string& request_id);
  // Refuses new requests with UNAVAILABLE from now on (drain).
  void StopAccepting();
  EngineStats GetStats() const;
  // OK while the engine can serve; the backend's fault once it broke (see on_backend_fault).
  absl::Status health() const;

  const LoadedModel& model() const;
  const EngineOptions& options() const;

 private:
  class Impl;
  explicit Engine(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace spqr
