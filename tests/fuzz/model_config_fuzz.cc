// libFuzzer target for config.json: the model hyper-parameters (ParseModelConfig) and the SpQR
// quantization_config block (ParseSpqrQuantizationConfig), both fed the same text. Every input must
// end in a status, never crash or throw; an accepted ModelConfig must hold the invariants the
// engine sizes its buffers from (positive dimensions, heads divisible by the KV heads, an even
// head_dim, a usable RoPE scaling, token ids in range), and an accepted quantization_config must
// be of the format version this build reads.
//
// Build (clang only): configure with -DSPQR_FUZZ=ON -DCMAKE_CXX_COMPILER=clang++, then build the
// target model_config_fuzz. Run it with -dict=tests/fuzz/model_config.dict, a scratch corpus
// directory first and tests/fuzz/corpus/model_config as seeds.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "engine/format/spqr_layer.h"
#include "engine/format/spqr_model.h"
#include "engine/model/model_config.h"

namespace {

void CheckModelConfig(const spqr::ModelConfig& c) {
  if (c.model_type != "llama" && c.model_type != "mistral" && c.model_type != "qwen2") {
    std::abort();
  }
  if (c.vocab_size <= 0 || c.hidden_size <= 0 || c.intermediate_size <= 0 ||
      c.num_hidden_layers <= 0 || c.num_attention_heads <= 0 || c.num_key_value_heads <= 0 ||
      c.head_dim <= 0 || c.max_position_embeddings <= 0) {
    std::abort();
  }
  if (c.num_attention_heads % c.num_key_value_heads != 0 || c.head_dim % 2 != 0) std::abort();
  if (!(c.rms_norm_eps > 0) || !(c.rope_theta > 0) || c.sliding_window < 0) std::abort();
  const spqr::RopeScaling& r = c.rope_scaling;
  if (r.type != spqr::RopeScaling::Type::kNone && !(r.factor > 0)) std::abort();
  if (r.type == spqr::RopeScaling::Type::kLlama3 &&
      (!(r.low_freq_factor > 0) || !(r.high_freq_factor > r.low_freq_factor) ||
       r.original_max_position_embeddings <= 0)) {
    std::abort();
  }
  if (c.bos_token_id < -1) std::abort();
  for (int32_t id : c.eos_token_ids) {
    if (id < 0) std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  auto config = spqr::ParseModelConfig(text, "fuzz/config.json");
  if (config.ok()) CheckModelConfig(*config);
  auto quantization = spqr::ParseSpqrQuantizationConfig(text, "fuzz/config.json");
  // SPQR_FUZZ_VERBOSE=1: print both statuses (e.g. to see that the seeds parse).
  static const bool verbose = std::getenv("SPQR_FUZZ_VERBOSE") != nullptr;
  if (verbose) {
    std::fprintf(stderr, "model: %s; quantization_config: %s\n", config.status().ToString().c_str(),
                 !quantization.ok()          ? quantization.status().ToString().c_str()
                 : quantization->has_value() ? "present"
                                             : "absent");
  }
  if (quantization.ok() && quantization->has_value() &&
      (*quantization)->format_version != spqr::kSpqrFormatVersion) {
    std::abort();
  }
  return 0;
}
