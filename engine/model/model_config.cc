#include "engine/model/model_config.h"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <optional>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "engine/util/status_macros.h"
#include "nlohmann/json.hpp"

namespace spqr {
namespace {

using nlohmann::json;

// Typed access to the keys of one JSON object; every error names the key and the file. JSON null
// counts as absent: Hugging Face writes `"head_dim": null` and the like for "use the default".
class JsonReader {
 public:
  JsonReader(const json& object, const std::string& source) : object_(object), source_(source) {}

  const json* Get(const std::string& key) const {
    auto it = object_.find(key);
    if (it == object_.end() || it->is_null()) return nullptr;
    return &*it;
  }

  absl::Status TypeError(const std::string& key, const char* expected) const {
    return absl::InvalidArgumentError(absl::StrCat(source_, ": key '", key, "' must be ", expected,
                                                   ", found ", Get(key)->type_name(), " ",
                                                   Get(key)->dump()));
  }

  absl::StatusOr<std::optional<int64_t>> OptionalInt(const std::string& key) const {
    const json* value = Get(key);
    if (value == nullptr) return std::optional<int64_t>();
    if (!value->is_number_integer()) return TypeError(key, "an integer");
    if (value->is_number_unsigned() && value->get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)) {
      return TypeError(key, "an integer that fits in 64 bits");
    }
    return std::optional<int64_t>(value->get<int64_t>());
  }

  absl::StatusOr<int64_t> RequiredInt(const std::string& key) const {
    ASSIGN_OR_RETURN(std::optional<int64_t> value, OptionalInt(key));
    if (!value) return Missing(key);
    return *value;
  }

  absl::StatusOr<int64_t> PositiveInt(const std::string& key,
                                      std::optional<int64_t> fallback) const {
    ASSIGN_OR_RETURN(std::optional<int64_t> value, OptionalInt(key));
    if (!value) {
      if (!fallback) return Missing(key);
      value = fallback;
    }
    if (*value <= 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(source_, ": key '", key, "' must be positive, found ", *value));
    }
    return *value;
  }

  absl::StatusOr<double> PositiveNumber(const std::string& key, double fallback) const {
    const json* value = Get(key);
    if (value == nullptr) return fallback;
    if (!value->is_number()) return TypeError(key, "a number");
    const double number = value->get<double>();
    if (!(number > 0)) {
      return absl::InvalidArgumentError(
          absl::StrCat(source_, ": key '", key, "' must be positive, found ", value->dump()));
    }
    return number;
  }

  absl::StatusOr<bool> Bool(const std::string& key, bool fallback) const {
    const json* value = Get(key);
    if (value == nullptr) return fallback;
    if (!value->is_boolean()) return TypeError(key, "true or false");
    return value->get<bool>();
  }

  absl::StatusOr<std::string> String(const std::string& key, const std::string& fallback) const {
    const json* value = Get(key);
    if (value == nullptr) return fallback;
    if (!value->is_string()) return TypeError(key, "a string");
    return value->get<std::string>();
  }

  // A token id: an integer in int32 range, or absent.
  absl::StatusOr<std::optional<int32_t>> TokenId(const std::string& key) const {
    ASSIGN_OR_RETURN(std::optional<int64_t> value, OptionalInt(key));
    if (!value) return std::optional<int32_t>();
    if (*value < 0 || *value > INT32_MAX) {
      return absl::InvalidArgumentError(
          absl::StrCat(source_, ": key '", key, "' must be a token id >= 0, found ", *value));
    }
    return std::optional<int32_t>(static_cast<int32_t>(*value));
  }

  // eos_token_id: one id or a list of ids (Llama 3 lists several).
  absl::StatusOr<std::vector<int32_t>> TokenIds(const std::string& key) const {
    const json* value = Get(key);
    if (value == nullptr) return std::vector<int32_t>();
    if (!value->is_array()) {
      ASSIGN_OR_RETURN(std::optional<int32_t> id, TokenId(key));
      return std::vector<int32_t>{*id};
    }
    std::vector<int32_t> ids;
    for (const json& item : *value) {
      if (!item.is_number_integer() || item.get<int64_t>() < 0 || item.get<int64_t>() > INT32_MAX) {
        return TypeError(key, "a token id or a list of token ids");
      }
      ids.push_back(static_cast<int32_t>(item.get<int64_t>()));
    }
    return ids;
  }

  absl::Status Missing(const std::string& key) const {
    return absl::InvalidArgumentError(absl::StrCat(source_, ": missing required key '", key, "'"));
  }

 private:
  const json& object_;
  const std::string& source_;
};

absl::StatusOr<json> ParseObject(const std::string& text, const std::string& source) {
  json parsed;
  try {
    parsed = json::parse(text);
  } catch (const json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": not valid JSON: ", e.what()));
  }
  if (!parsed.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": must be a JSON object, found ", parsed.type_name()));
  }
  return parsed;
}

// `key` is "rope_scaling", or "rope_parameters" (transformers >= 5 moved the scaling and
// rope_theta there).
absl::StatusOr<RopeScaling> ParseRopeScaling(const json& config, const std::string& key,
                                             const std::string& source) {
  RopeScaling scaling;
  auto it = config.find(key);
  if (it == config.end() || it->is_null()) return scaling;
  if (!it->is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(
        source, ": key '", key, "' must be null or an object, found ", it->type_name()));
  }
  const std::string where = absl::StrCat(source, " (", key, ")");
  JsonReader reader(*it, where);
  // transformers renamed "type" to "rope_type"; both spellings are in the wild.
  ASSIGN_OR_RETURN(std::string type, reader.String("rope_type", ""));
  if (type.empty()) {
    ASSIGN_OR_RETURN(type, reader.String("type", ""));
  }
  if (type.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": ", key, " needs a 'rope_type' (or 'type')"));
  }
  if (type == "default") return scaling;
  if (type == "linear") {
    scaling.type = RopeScaling::Type::kLinear;
    if (reader.Get("factor") == nullptr) return reader.Missing("factor");
    ASSIGN_OR_RETURN(scaling.factor, reader.PositiveNumber("factor", 0));
    return scaling;
  }
  if (type == "llama3") {
    scaling.type = RopeScaling::Type::kLlama3;
    for (const char* key :
         {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}) {
      if (reader.Get(key) == nullptr) return reader.Missing(key);
    }
    ASSIGN_OR_RETURN(scaling.factor, reader.PositiveNumber("factor", 0));
    ASSIGN_OR_RETURN(scaling.low_freq_factor, reader.PositiveNumber("low_freq_factor", 0));
    ASSIGN_OR_RETURN(scaling.high_freq_factor, reader.PositiveNumber("high_freq_factor", 0));
    ASSIGN_OR_RETURN(scaling.original_max_position_embeddings,
                     reader.PositiveInt("original_max_position_embeddings", std::nullopt));
    // The llama3 formula divides by (high - low); equal factors would divide by zero.
    if (scaling.high_freq_factor <= scaling.low_freq_factor) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": high_freq_factor (", scaling.high_freq_factor,
                       ") must be greater than low_freq_factor (", scaling.low_freq_factor, ")"));
    }
    return scaling;
  }
  return absl::UnimplementedError(absl::StrCat(key, " type '", type, "' in ", source,
                                               " is not supported (supported: linear, llama3, "
                                               "default)"));
}

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(absl::StrCat(path, ": cannot open: ", std::strerror(errno)));
  }
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat(path, ": read failed"));
  return text.str();
}

bool FileExists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

void AppendUnique(const std::vector<int32_t>& ids, std::vector<int32_t>* out) {
  for (int32_t id : ids) {
    if (std::find(out->begin(), out->end(), id) == out->end()) out->push_back(id);
  }
}

}  // namespace

absl::StatusOr<ModelConfig> ParseModelConfig(const std::string& json_text,
                                             const std::string& source) {
  ASSIGN_OR_RETURN(json root, ParseObject(json_text, source));
  JsonReader reader(root, source);
  ModelConfig config;

  ASSIGN_OR_RETURN(config.model_type, reader.String("model_type", ""));
  if (config.model_type.empty()) return reader.Missing("model_type");
  if (config.model_type != "llama" && config.model_type != "mistral" &&
      config.model_type != "qwen2") {
    return absl::InvalidArgumentError(absl::StrCat("unsupported model_type '", config.model_type,
                                                   "' in ", source,
                                                   " (supported: llama, mistral, qwen2)"));
  }
  // The forward pass implements SwiGLU only.
  ASSIGN_OR_RETURN(std::string hidden_act, reader.String("hidden_act", "silu"));
  if (hidden_act != "silu") {
    return absl::UnimplementedError(absl::StrCat("hidden_act '", hidden_act, "' in ", source,
                                                 " is not supported (supported: silu)"));
  }
  ASSIGN_OR_RETURN(bool mlp_bias, reader.Bool("mlp_bias", false));
  if (mlp_bias) {
    return absl::UnimplementedError(
        absl::StrCat("mlp_bias=true in ", source, " is not supported (MLP layers without bias)"));
  }

  ASSIGN_OR_RETURN(config.vocab_size, reader.PositiveInt("vocab_size", std::nullopt));
  ASSIGN_OR_RETURN(config.hidden_size, reader.PositiveInt("hidden_size", std::nullopt));
  ASSIGN_OR_RETURN(config.intermediate_size, reader.PositiveInt("intermediate_size", std::nullopt));
  ASSIGN_OR_RETURN(config.num_hidden_layers, reader.PositiveInt("num_hidden_layers", std::nullopt));
  ASSIGN_OR_RETURN(config.num_attention_heads,
                   reader.PositiveInt("num_attention_heads", std::nullopt));
  ASSIGN_OR_RETURN(config.num_key_value_heads,
                   reader.PositiveInt("num_key_value_heads", config.num_attention_heads));
  if (config.num_attention_heads % config.num_key_value_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        source, ": num_attention_heads (", config.num_attention_heads,
        ") must be a multiple of num_key_value_heads (", config.num_key_value_heads, ")"));
  }
  if (reader.Get("head_dim") == nullptr && config.hidden_size % config.num_attention_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": hidden_size (", config.hidden_size,
                                                   ") is not a multiple of num_attention_heads (",
                                                   config.num_attention_heads,
                                                   ") and no head_dim is given"));
  }
  ASSIGN_OR_RETURN(config.head_dim,
                   reader.PositiveInt("head_dim", config.hidden_size / config.num_attention_heads));
  // RoPE rotates pairs of dimensions.
  if (config.head_dim % 2 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": head_dim (", config.head_dim, ") must be even for RoPE"));
  }
  ASSIGN_OR_RETURN(config.max_position_embeddings,
                   reader.PositiveInt("max_position_embeddings", 2048));
  ASSIGN_OR_RETURN(config.rms_norm_eps, reader.PositiveNumber("rms_norm_eps", 1e-6));
  ASSIGN_OR_RETURN(config.rope_theta, reader.PositiveNumber("rope_theta", 10000.0));
  if (reader.Get("rope_scaling") == nullptr && reader.Get("rope_parameters") != nullptr) {
    ASSIGN_OR_RETURN(config.rope_scaling, ParseRopeScaling(root, "rope_parameters", source));
    if (reader.Get("rope_parameters")->is_object()) {
      JsonReader parameters(*reader.Get("rope_parameters"), source + " (rope_parameters)");
      ASSIGN_OR_RETURN(config.rope_theta,
                       parameters.PositiveNumber("rope_theta", config.rope_theta));
    }
  } else {
    ASSIGN_OR_RETURN(config.rope_scaling, ParseRopeScaling(root, "rope_scaling", source));
  }
  ASSIGN_OR_RETURN(config.tie_word_embeddings, reader.Bool("tie_word_embeddings", false));
  if (config.model_type == "qwen2") {
    config.attention_bias = true;  // Qwen2 always has q/k/v biases; its config has no key for it
  } else {
    ASSIGN_OR_RETURN(config.attention_bias, reader.Bool("attention_bias", false));
  }
  // Newer transformers write "dtype", older "torch_dtype".
  ASSIGN_OR_RETURN(config.torch_dtype, reader.String("torch_dtype", ""));
  if (config.torch_dtype.empty()) {
    ASSIGN_OR_RETURN(config.torch_dtype, reader.String("dtype", ""));
  }
  ASSIGN_OR_RETURN(std::optional<int32_t> bos, reader.TokenId("bos_token_id"));
  config.bos_token_id = bos.value_or(-1);
  ASSIGN_OR_RETURN(config.eos_token_ids, reader.TokenIds("eos_token_id"));

  ASSIGN_OR_RETURN(std::optional<int64_t> sliding_window, reader.OptionalInt("sliding_window"));
  // Qwen2 configs carry a sliding_window that only applies when use_sliding_window is true.
  ASSIGN_OR_RETURN(bool use_sliding_window, reader.Bool("use_sliding_window", true));
  if (sliding_window && use_sliding_window) {
    if (*sliding_window < 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          source, ": key 'sliding_window' must not be negative, found ", *sliding_window));
    }
    config.sliding_window = *sliding_window;
  }
  return config;
}

absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& dir) {
  const std::string config_path = absl::StrCat(dir, "/config.json");
  if (!FileExists(config_path)) {
    return absl::NotFoundError(
        absl::StrCat(config_path, ": not found (is ", dir, " a Hugging Face model directory?)"));
  }
  ASSIGN_OR_RETURN(std::string config_text, ReadFile(config_path));
  ASSIGN_OR_RETURN(ModelConfig config, ParseModelConfig(config_text, config_path));

  // generation_config.json is where transformers looks for generation defaults; its bos wins and
  // its eos ids (often a longer list, e.g. Llama 3's end-of-turn ids) join config.json's.
  const std::string generation_path = absl::StrCat(dir, "/generation_config.json");
  if (!FileExists(generation_path)) return config;
  ASSIGN_OR_RETURN(std::string generation_text, ReadFile(generation_path));
  ASSIGN_OR_RETURN(json generation, ParseObject(generation_text, generation_path));
  JsonReader reader(generation, generation_path);
  ASSIGN_OR_RETURN(std::optional<int32_t> bos, reader.TokenId("bos_token_id"));
  if (bos) config.bos_token_id = *bos;
  ASSIGN_OR_RETURN(std::vector<int32_t> eos, reader.TokenIds("eos_token_id"));
  AppendUnique(eos, &config.eos_token_ids);
  return config;
}

}  // namespace spqr
