// The tensors of a LLaMA-family decoder, as views into the checkpoint (never copied to fp32).
#pragma once

#include <memory>
#include <optional>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/model/model_config.h"
#include "engine/model/safetensors.h"
#include "engine/model/tensor.h"

namespace spqr {

// A linear layer y = W x (+ b). W is [out_features, in_features], row-major, F32/F16/BF16.
struct LinearTensors {
  TensorView weight;
  std::optional<TensorView> bias;  // q/k/v of qwen2 (and llama with attention_bias)
  int64_t out_features = 0;
  int64_t in_features = 0;
};

struct DecoderLayerWeights {
  TensorView input_layernorm;           // [hidden]
  LinearTensors q_proj, k_proj, v_proj, o_proj;
  TensorView post_attention_layernorm;  // [hidden]
  LinearTensors gate_proj, up_proj, down_proj;
};

struct LlamaWeights {
  ModelConfig config;
  TensorView embed_tokens;  // [vocab, hidden]
  std::vector<DecoderLayerWeights> layers;
  TensorView norm;          // [hidden]
  LinearTensors lm_head;    // aliases embed_tokens when tie_word_embeddings
  std::shared_ptr<const Checkpoint> checkpoint;  // keeps the mapped memory alive
};

// Binds the checkpoint's tensors to the config, checking every name, dtype and shape. Errors name
// the tensor, what was expected and what was found.
absl::StatusOr<std::shared_ptr<const LlamaWeights>> BindLlamaWeights(
    std::shared_ptr<const Checkpoint> checkpoint, const ModelConfig& config);

}  // namespace spqr
