// The model hyper-parameters of a Hugging Face LLaMA-family checkpoint (config.json plus the
// generation defaults of generation_config.json).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace spqr {

// rope_scaling of config.json. kNone: plain RoPE; kLinear: positions divided by `factor`;
// kLlama3: the frequency-dependent scaling of Llama 3.1.
struct RopeScaling {
  enum class Type { kNone, kLinear, kLlama3 };
  Type type = Type::kNone;
  double factor = 1.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 8192;
};

struct ModelConfig {
  std::string model_type;  // "llama", "mistral" or "qwen2"
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;  // GQA; equals num_attention_heads for plain MHA
  int64_t head_dim = 0;             // hidden_size / num_attention_heads unless given
  int64_t max_position_embeddings = 0;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  bool tie_word_embeddings = false;
  bool attention_bias = false;  // q/k/v biases (qwen2 always, llama when attention_bias=true)
  std::string torch_dtype;      // informational
  int32_t bos_token_id = -1;    // -1 when absent
  std::vector<int32_t> eos_token_ids;  // union of config.json and generation_config.json

  // Sliding window (mistral) is not supported beyond max_position_embeddings; recorded for info.
  int64_t sliding_window = 0;
};

// Parses config.json text. `source` names the file in error messages.
absl::StatusOr<ModelConfig> ParseModelConfig(const std::string& json_text,
                                             const std::string& source);

// Reads `dir`/config.json and, when present, `dir`/generation_config.json (bos/eos overrides).
absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& dir);

}  // namespace spqr
