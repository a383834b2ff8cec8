// The tensors of a LLaMA-family decoder, as views into the checkpoint (never copied to fp32).
#pragma once

#include <memory>
#include <optional>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/format/spqr_layer.h"
#include "engine/model/model_config.h"
#include "engine/model/safetensors.h"
#include "engine/model/tensor.h"

namespace spqr {

// A linear layer y = W x (+ b). W is [out_features, in_features], row-major, F32/F16/BF16.
// In an SpQR model directory (config.json with a quantization_config block) the decoder-block
// projections are stored packed instead: `spqr` then holds the layer (read and validated at bind
// time, kept packed; backends decode it on the fly) and `weight` is empty (data == nullptr).
struct LinearTensors {
  TensorView weight;
  std::optional<TensorView> bias;  // q/k/v of qwen2 (and llama with attention_bias)
  int64_t out_features = 0;
  int64_t in_features = 0;
  std::shared_ptr<const PackedSpqrLayer> spqr;  // non-null for an SpQR-quantized layer
};

struct DecoderLayerWeights {
  TensorView input_layernorm;  // [hidden]
  LinearTensors q_proj, k_proj, v_proj, o_proj;
  TensorView post_attention_layernorm;  // [hidden]
  LinearTensors gate_proj, up_proj, down_proj;
};

struct LlamaWeights {
  ModelConfig config;
  TensorView embed_tokens;  // [vocab, hidden]
  std::vector<DecoderLayerWeights> layers;
  TensorView norm;                               // [hidden]
  LinearTensors lm_head;                         // aliases embed_tokens when tie_word_embeddings
  std::shared_ptr<const Checkpoint> checkpoint;  // keeps the mapped memory alive
};

// Binds the checkpoint's tensors to the config, checking every name, dtype and shape. Errors name
// the tensor, what was expected and what was found. When the checkpoint's config.json has a
// quantization_config block (ParseSpqrQuantizationConfig), the shard CRC-32s are verified first
// (DATA_LOSS naming the file) and every projection stored as "<prefix>.spqr_*" is bound as an SpQR
// layer (SpqrLayerFromTensors: version, shapes, per-layer CRC and structure checked); its shape
// must match the config. An unknown format version is FAILED_PRECONDITION naming config.json.
// Every dense float tensor is then scanned for NaN/Inf (CheckTensorsFinite, in parallel):
// DATA_LOSS naming the tensor and the first bad flat index.
absl::StatusOr<std::shared_ptr<const LlamaWeights>> BindLlamaWeights(
    std::shared_ptr<const Checkpoint> checkpoint, const ModelConfig& config);

}  // namespace spqr
