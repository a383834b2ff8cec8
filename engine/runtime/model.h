// A loaded model: config, tokenizer, weights and the backend that runs them.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "engine/backend/backend.h"
#include "engine/model/llama_weights.h"
#include "engine/model/model_config.h"
#include "engine/tokenizer/tokenizer.h"

namespace spqr {

struct ModelLoadOptions {
  std::string backend = "auto";  // "cpu", "cuda" or "auto" (cuda when built in and a device exists)
  int num_threads = 0;           // CPU backend threads; 0 = all cores
};

// Everything about how the weights are stored, for GetModelInfo. Dense checkpoints report their
// dtype; SpQR models (later) fill the quantization fields.
struct QuantizationInfo {
  std::string method = "none";  // "none", "spqr", "gptq", "rtn"
  std::string weight_dtype;     // "bf16", "f16", "f32" for dense checkpoints
};

struct LoadedModel {
  std::string dir;
  ModelConfig config;
  std::unique_ptr<Tokenizer> tokenizer;
  std::shared_ptr<const LlamaWeights> weights;
  std::unique_ptr<Backend> backend;
  QuantizationInfo quantization;
};

// Loads `dir` (config.json, generation_config.json, safetensors, tokenizer.model) and creates the
// backend. Errors name the file and the problem.
absl::StatusOr<std::unique_ptr<LoadedModel>> LoadModel(const std::string& dir,
                                                       const ModelLoadOptions& options);

}  // namespace spqr
