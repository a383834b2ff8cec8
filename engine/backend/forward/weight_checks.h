// Checks that bound LLaMA weights fit the model config before a backend runs them: the config's
// sizes, every tensor's dtype, shape and byte count, and every projection's dimensions (packed
// SpQR layers were validated when bound, so only their shape is rechecked). Shared by the CPU and
// CUDA backends so both refuse the same models with the same messages.
#pragma once

#include "absl/status/status.h"
#include "engine/model/llama_weights.h"

namespace spqr {

// OK when `weights` can run through RunLlamaForward (llama_forward.h): positive config sizes,
// num_attention_heads a multiple of num_key_value_heads, an even head_dim of at most 1024, one
// bound layer per config layer, dense tensors of F32/F16/BF16 with the expected shapes and all
// their bytes, projections of the expected out/in features, and attention biases when the config
// has them. INVALID_ARGUMENT naming the tensor (or config field) otherwise; `backend` ("CPU",
// "CUDA") names who refuses an unsupported dtype.
absl::Status CheckLlamaWeights(const LlamaWeights& weights, const char* backend);

}  // namespace spqr
