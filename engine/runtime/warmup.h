// The engine's start-up check of a loaded model: a short prefill and a few greedy decode steps run
// straight through Backend::Forward before the engine thread starts, with every step's logits
// checked to be finite. A model that cannot produce a usable step (a non-finite weight the load
// check missed, a broken kernel, a fault that appears only past position 0 or only on the decode
// path) is refused at Engine::Create, and the server stays NOT_SERVING with a message naming the
// step that failed, instead of failing its first requests.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/backend/backend.h"
#include "engine/model/model_config.h"

namespace spqr {

// At most this many prompt tokens and decode steps; fewer when the context or the KV pool is
// smaller (WarmUpPlanFor).
inline constexpr int32_t kWarmUpPrefillTokens = 8;
inline constexpr int32_t kWarmUpDecodeSteps = 4;

struct WarmUpPlan {
  std::vector<int32_t> prompt;  // the prefill's tokens
  int32_t decode_steps = 0;
};

// The warm-up for `config` on a pool of `pool` geometry: the prompt is the BOS token (0 without
// one) followed by the next ids, so that every model has the same deterministic warm-up. At least
// one prompt token; decode steps only when the context and the pool hold more positions.
WarmUpPlan WarmUpPlanFor(const ModelConfig& config, const KvPoolShape& pool);

// Runs `plan` on `backend` (whose KV pool is allocated with `pool`): one prefill step with logits
// for every prompt position, then `decode_steps` steps of one greedy token each. The KV blocks it
// writes (from block 0) are overwritten by the first real sequences. Returns the vocabulary size
// the backend produces logits for. Errors name the step ("warm-up decode step 2 of 4 at position
// 9: ..."): the backend's error, a wrong number of logits, or the first non-finite logit (its
// value, position and vocabulary entry), INTERNAL.
absl::StatusOr<int32_t> RunWarmUp(Backend& backend, const WarmUpPlan& plan,
                                  const KvPoolShape& pool);

}  // namespace spqr
