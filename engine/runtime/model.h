// A loaded model: config, tokenizer, weights and the backend that runs them.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "engine/backend/backend.h"
#include "engine/model/llama_weights.h"
#include "engine/model/model_config.h"
#include "engine/runtime/model_chat.h"
#include "engine/tokenizer/tokenizer.h"

namespace spqr {

struct ModelLoadOptions {
  // "cpu", "cuda" or "auto": cuda when this build has the CUDA backend and device 0 can run its
  // kernels, else cpu (LoadedModel::backend_note says which and why).
  std::string backend = "auto";
  int num_threads = 0;                    // CPU backend threads; 0 = all cores
  std::string spqr_cpu_kernel = "auto";   // "auto", "exact" or "int8" (cpu_backend.h)
  std::string dense_cpu_kernel = "auto";  // "auto", "exact" or "bf16" (cpu_backend.h)
};

// Everything about how the weights are stored, for GetModelInfo. Dense checkpoints report their
// dtype; SpQR model directories fill the quantization fields from config.json's
// quantization_config (docs/model-format.md); they stay 0 / empty for dense checkpoints.
struct QuantizationInfo {
  std::string method = "none";  // "none", "spqr", "gptq", "rtn"
  std::string weight_dtype;     // "bf16", "f16", "f32" for dense checkpoints; dtype of the
                                // unquantized tensors (embeddings, norms, lm_head) otherwise
  int format_version = 0;       // "spqr-format" version of the directory
  double bits_per_param_formula = 0.0;  // the paper's average bits per parameter
  double bits_per_param_real = 0.0;     // real payload bytes * 8 / quantized parameters
  int wbits = 0;
  int beta1 = 0;               // columns per first-level statistics group
  int beta2 = 0;               // rows per second-level block
  int stats_bits = 0;          // 16 = unquantized (fp16) statistics
  double outlier_share = 0.0;  // outliers / quantized parameters
  double tau = 0.0;            // outlier threshold (infinity: no outliers)
  double lambda = 0.0;         // Hessian damping
  bool act_order = false;
  std::string quantizer_version;
  std::string calibration;  // "file=..., nsamples=..., seqlen=..., seed=..."
};

struct LoadedModel {
  std::string dir;
  ModelConfig config;
  std::unique_ptr<Tokenizer> tokenizer;
  // Set when tokenizer.json was passed over for tokenizer.model, saying why (OpenModelTokenizer).
  std::string tokenizer_note;
  std::shared_ptr<const LlamaWeights> weights;
  std::unique_ptr<Backend> backend;
  // With backend "auto": which backend was chosen and why, for the start-up log.
  std::string backend_note;
  QuantizationInfo quantization;
  // The chat template and its end-of-turn tokens (model_chat.h); no template is not an error.
  ModelChat chat;
};

// Which backend a ModelLoadOptions::backend value means here: "auto" resolved against this build
// and the devices present (the same rule LoadModel applies), other values returned as they are;
// `reason` says why for "auto" (empty otherwise). Never fails (an unknown name is LoadModel's
// error); with CUDA built in it queries the devices (QueryCudaDevices).
struct BackendChoice {
  std::string name;
  std::string reason;
};
BackendChoice ResolveBackend(const std::string& backend);

// Loads `dir` (config.json, generation_config.json, safetensors, tokenizer.json or tokenizer.model:
// see OpenModelTokenizer, the chat template: see LoadModelChat) and creates the backend. Errors
// name the file and the problem.
absl::StatusOr<std::unique_ptr<LoadedModel>> LoadModel(const std::string& dir,
                                                       const ModelLoadOptions& options);

}  // namespace spqr
