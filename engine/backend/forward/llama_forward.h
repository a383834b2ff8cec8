// The LLaMA forward step, written once for every backend over ForwardOps (forward_ops.h):
// embedding, then per decoder layer RMSNorm -> q/k/v -> RoPE -> KV write -> paged attention ->
// o_proj + residual -> RMSNorm -> gate/up -> SwiGLU -> down_proj + residual, then the final
// RMSNorm and lm_head for the rows whose logits are wanted.
#pragma once

#include "absl/status/status.h"
#include "engine/backend/backend.h"
#include "engine/backend/forward/forward_ops.h"
#include "engine/model/llama_weights.h"

namespace spqr {

// Checks a plan against the model and the KV pool, as Backend::Forward promises: every sequence
// has tokens, start_pos >= 0, num_logits in [0, tokens], token ids in [0, vocab_size), block
// tables long enough with block ids inside the pool, and no KV slot written twice in the step.
// INVALID_ARGUMENT naming the sequence and field; FAILED_PRECONDITION (naming `backend`) when no
// pool was allocated.
absl::Status ValidateStepPlan(const StepPlan& plan, int64_t vocab_size, const KvPoolShape& pool,
                              const char* backend);

// One decoder layer (`layer` is layer number `index`): RMSNorm -> q/k/v -> RoPE -> KV write ->
// attention -> o_proj + residual -> RMSNorm -> gate/up -> SwiGLU -> down_proj + residual, reading
// and updating the residual stream in Act::kX. RunLlamaForward calls it per layer; the quantizer's
// block forward (quantizer/block_forward.h) calls it alone, on its own ops, for one block.
absl::Status RunLlamaLayer(const DecoderLayerWeights& layer, int64_t index, float eps,
                           ForwardOps& ops);

// Runs one validated step (ValidateStepPlan first) through `ops` and fills `out` with the logits
// of the rows the plan asks for, in plan order.
absl::Status RunLlamaForward(const LlamaWeights& weights, const StepPlan& plan, ForwardOps& ops,
                             StepOutput* out);

}  // namespace spqr
