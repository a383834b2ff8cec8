#include "engine/model/model_config.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/unit/safetensors_test_util.h"

namespace spqr {
namespace {

using ::spqr::testing::TempDir;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

// A TinyLlama-shaped config.json.
constexpr char kLlamaConfig[] = R"({
  "architectures": ["LlamaForCausalLM"],
  "model_type": "llama",
  "vocab_size": 32000,
  "hidden_size": 2048,
  "intermediate_size": 5632,
  "num_hidden_layers": 22,
  "num_attention_heads": 32,
  "num_key_value_heads": 4,
  "max_position_embeddings": 2048,
  "rms_norm_eps": 1e-05,
  "rope_theta": 10000.0,
  "rope_scaling": null,
  "hidden_act": "silu",
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "bos_token_id": 1,
  "eos_token_id": 2
})";

// Replaces (or with an empty value, removes) `key` in a JSON object text, via the test's own
// minimal edit: appending a duplicate key makes nlohmann keep the last occurrence.
std::string With(const std::string& json, const std::string& key, const std::string& value) {
  std::string out = json.substr(0, json.rfind('}'));
  return out + ", \"" + key + "\": " + value + "}";
}

absl::StatusOr<ModelConfig> Parse(const std::string& json) {
  return ParseModelConfig(json, "/models/x/config.json");
}

TEST(ModelConfigTest, ParsesLlamaWithGroupedQueryAttention) {
  auto config = Parse(kLlamaConfig);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->model_type, "llama");
  EXPECT_EQ(config->vocab_size, 32000);
  EXPECT_EQ(config->hidden_size, 2048);
  EXPECT_EQ(config->intermediate_size, 5632);
  EXPECT_EQ(config->num_hidden_layers, 22);
  EXPECT_EQ(config->num_attention_heads, 32);
  EXPECT_EQ(config->num_key_value_heads, 4);
  EXPECT_EQ(config->head_dim, 64);
  EXPECT_EQ(config->max_position_embeddings, 2048);
  EXPECT_DOUBLE_EQ(config->rms_norm_eps, 1e-5);
  EXPECT_DOUBLE_EQ(config->rope_theta, 10000.0);
  EXPECT_EQ(config->rope_scaling.type, RopeScaling::Type::kNone);
  EXPECT_FALSE(config->tie_word_embeddings);
  EXPECT_FALSE(config->attention_bias);
  EXPECT_EQ(config->torch_dtype, "bfloat16");
  EXPECT_EQ(config->bos_token_id, 1);
  EXPECT_THAT(config->eos_token_ids, ElementsAre(2));
  EXPECT_EQ(config->sliding_window, 0);
}

TEST(ModelConfigTest, DefaultsForOptionalKeys) {
  auto config = Parse(R"({"model_type": "llama", "vocab_size": 100, "hidden_size": 64,
                          "intermediate_size": 128, "num_hidden_layers": 2,
                          "num_attention_heads": 4, "head_dim": null})");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->num_key_value_heads, 4);  // plain multi-head attention
  EXPECT_EQ(config->head_dim, 16);
  EXPECT_EQ(config->max_position_embeddings, 2048);
  EXPECT_DOUBLE_EQ(config->rope_theta, 10000.0);
  EXPECT_DOUBLE_EQ(config->rms_norm_eps, 1e-6);
  EXPECT_FALSE(config->tie_word_embeddings);
  EXPECT_EQ(config->bos_token_id, -1);
  EXPECT_THAT(config->eos_token_ids, IsEmpty());
}

TEST(ModelConfigTest, ExplicitHeadDimMayDifferFromHiddenOverHeads) {
  auto config = Parse(With(kLlamaConfig, "head_dim", "128"));
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->head_dim, 128);
}

TEST(ModelConfigTest, ParsesMistralWithSlidingWindow) {
  auto config = Parse(R"({"model_type": "mistral", "vocab_size": 32000, "hidden_size": 4096,
      "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
      "num_key_value_heads": 8, "max_position_embeddings": 32768, "rope_theta": 1000000.0,
      "sliding_window": 4096, "bos_token_id": 1, "eos_token_id": 2})");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->model_type, "mistral");
  EXPECT_EQ(config->num_key_value_heads, 8);
  EXPECT_EQ(config->head_dim, 128);
  EXPECT_EQ(config->sliding_window, 4096);
  EXPECT_DOUBLE_EQ(config->rope_theta, 1e6);
  EXPECT_FALSE(config->attention_bias);
}

TEST(ModelConfigTest, Qwen2AlwaysHasAttentionBiasAndEosLists) {
  auto config = Parse(R"({"model_type": "qwen2", "vocab_size": 151936, "hidden_size": 896,
      "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
      "num_key_value_heads": 2, "tie_word_embeddings": true, "use_sliding_window": false,
      "sliding_window": 32768, "bos_token_id": 151643, "eos_token_id": [151645, 151643]})");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_TRUE(config->attention_bias);
  EXPECT_TRUE(config->tie_word_embeddings);
  EXPECT_EQ(config->head_dim, 64);
  EXPECT_EQ(config->sliding_window, 0);  // use_sliding_window is false
  EXPECT_THAT(config->eos_token_ids, ElementsAre(151645, 151643));
}

TEST(ModelConfigTest, LlamaAttentionBiasComesFromTheConfig) {
  auto config = Parse(With(kLlamaConfig, "attention_bias", "true"));
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_TRUE(config->attention_bias);
}

TEST(ModelConfigTest, UnsupportedModelTypeIsNamed) {
  auto config = Parse(With(kLlamaConfig, "model_type", "\"gpt2\""));
  EXPECT_TRUE(absl::IsInvalidArgument(config.status()));
  EXPECT_EQ(config.status().message(),
            "unsupported model_type 'gpt2' in /models/x/config.json (supported: llama, mistral, "
            "qwen2)");
  auto missing = Parse(R"({"vocab_size": 3})");
  EXPECT_THAT(std::string(missing.status().message()),
              HasSubstr("missing required key 'model_type'"));
}

TEST(ModelConfigTest, MissingRequiredKeysAreNamed) {
  for (const char* key : {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                          "num_attention_heads"}) {
    auto config = Parse(With(kLlamaConfig, key, "null"));
    EXPECT_TRUE(absl::IsInvalidArgument(config.status())) << key;
    EXPECT_EQ(config.status().message(),
              std::string("/models/x/config.json: missing required key '") + key + "'");
  }
}

TEST(ModelConfigTest, WrongJsonTypesNameTheKeyAndFile) {
  const std::vector<std::tuple<std::string, std::string, std::string>> cases = {
      {"hidden_size", "\"2048\"", "key 'hidden_size' must be an integer, found string"},
      {"num_key_value_heads", "4.0", "key 'num_key_value_heads' must be an integer"},
      {"rms_norm_eps", "\"1e-5\"", "key 'rms_norm_eps' must be a number"},
      {"tie_word_embeddings", "1", "key 'tie_word_embeddings' must be true or false"},
      {"eos_token_id", "\"</s>\"", "key 'eos_token_id' must be an integer"},
      {"eos_token_id", "[2, \"x\"]", "key 'eos_token_id' must be a token id or a list"},
      {"bos_token_id", "-3", "key 'bos_token_id' must be a token id >= 0"},
      {"rope_scaling", "\"linear\"", "key 'rope_scaling' must be null or an object"},
      {"model_type", "7", "key 'model_type' must be a string"},
  };
  for (const auto& [key, value, problem] : cases) {
    auto config = Parse(With(kLlamaConfig, key, value));
    EXPECT_TRUE(absl::IsInvalidArgument(config.status())) << key << ": " << config.status();
    EXPECT_THAT(std::string(config.status().message()), HasSubstr("/models/x/config.json"));
    EXPECT_THAT(std::string(config.status().message()), HasSubstr(problem));
  }
}

TEST(ModelConfigTest, InconsistentSizesAreRejected) {
  auto config = Parse(With(kLlamaConfig, "num_key_value_heads", "5"));
  EXPECT_THAT(std::string(config.status().message()),
              HasSubstr("num_attention_heads (32) must be a multiple of num_key_value_heads (5)"));
  config = Parse(With(kLlamaConfig, "hidden_size", "0"));
  EXPECT_THAT(std::string(config.status().message()),
              HasSubstr("key 'hidden_size' must be positive, found 0"));
  config = Parse(With(kLlamaConfig, "num_hidden_layers", "-1"));
  EXPECT_THAT(std::string(config.status().message()),
              HasSubstr("'num_hidden_layers' must be positive"));
  config = Parse(With(kLlamaConfig, "hidden_size", "2050"));
  EXPECT_THAT(std::string(config.status().message()),
              HasSubstr("hidden_size (2050) is not a multiple of num_attention_heads (32)"));
  config = Parse(With(kLlamaConfig, "rope_theta", "0"));
  EXPECT_THAT(std::string(config.status().message()), HasSubstr("'rope_theta' must be positive"));
}

TEST(ModelConfigTest, UnsupportedActivationOrMlpBiasIsUnimplemented) {
  auto config = Parse(With(kLlamaConfig, "hidden_act", "\"gelu\""));
  EXPECT_TRUE(absl::IsUnimplemented(config.status()));
  EXPECT_THAT(std::string(config.status().message()), HasSubstr("hidden_act 'gelu'"));
  config = Parse(With(kLlamaConfig, "mlp_bias", "true"));
  EXPECT_TRUE(absl::IsUnimplemented(config.status()));
}

TEST(ModelConfigTest, InvalidJsonIsReported) {
  auto config = Parse("{\"model_type\": ");
  EXPECT_TRUE(absl::IsInvalidArgument(config.status()));
  EXPECT_THAT(std::string(config.status().message()),
              HasSubstr("/models/x/config.json: not valid JSON"));
  config = Parse("[]");
  EXPECT_THAT(std::string(config.status().message()),
              HasSubstr("must be a JSON object, found array"));
}

TEST(ModelConfigTest, RopeScalingLinearWithEitherKeySpelling) {
  for (const char* type_key : {"type", "rope_type"}) {
    auto config = Parse(With(kLlamaConfig, "rope_scaling",
                             std::string("{\"") + type_key + "\": \"linear\", \"factor\": 4.0}"));
    ASSERT_TRUE(config.ok()) << config.status();
    EXPECT_EQ(config->rope_scaling.type, RopeScaling::Type::kLinear);
    EXPECT_DOUBLE_EQ(config->rope_scaling.factor, 4.0);
  }
  auto missing = Parse(With(kLlamaConfig, "rope_scaling", R"({"type": "linear"})"));
  EXPECT_THAT(std::string(missing.status().message()),
              HasSubstr("config.json (rope_scaling): missing required key 'factor'"));
}

TEST(ModelConfigTest, RopeScalingLlama3) {
  auto config = Parse(With(kLlamaConfig, "rope_scaling",
                           R"({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                               "high_freq_factor": 4.0,
                               "original_max_position_embeddings": 8192})"));
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->rope_scaling.type, RopeScaling::Type::kLlama3);
  EXPECT_DOUBLE_EQ(config->rope_scaling.factor, 8.0);
  EXPECT_DOUBLE_EQ(config->rope_scaling.low_freq_factor, 1.0);
  EXPECT_DOUBLE_EQ(config->rope_scaling.high_freq_factor, 4.0);
  EXPECT_EQ(config->rope_scaling.original_max_position_embeddings, 8192);

  auto incomplete =
      Parse(With(kLlamaConfig, "rope_scaling", R"({"rope_type": "llama3", "factor": 8.0})"));
  EXPECT_THAT(std::string(incomplete.status().message()),
              HasSubstr("missing required key 'low_freq_factor'"));
  auto inverted = Parse(With(kLlamaConfig, "rope_scaling",
                             R"({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0,
                                 "high_freq_factor": 4.0,
                                 "original_max_position_embeddings": 8192})"));
  EXPECT_THAT(std::string(inverted.status().message()),
              HasSubstr("high_freq_factor (4) must be greater than low_freq_factor (4)"));
}

TEST(ModelConfigTest, RopeScalingDefaultAndNullMeanPlainRope) {
  for (const char* value : {"null", R"({"rope_type": "default"})"}) {
    auto config = Parse(With(kLlamaConfig, "rope_scaling", value));
    ASSERT_TRUE(config.ok()) << config.status();
    EXPECT_EQ(config->rope_scaling.type, RopeScaling::Type::kNone);
  }
}

TEST(ModelConfigTest, UnsupportedRopeScalingTypesAreNamed) {
  for (const char* type : {"dynamic", "yarn", "longrope"}) {
    auto config = Parse(With(kLlamaConfig, "rope_scaling",
                             std::string(R"({"type": ")") + type + R"(", "factor": 2.0})"));
    EXPECT_TRUE(absl::IsUnimplemented(config.status())) << type;
    EXPECT_THAT(
        std::string(config.status().message()),
        HasSubstr(std::string("rope_scaling type '") + type + "' in /models/x/config.json"));
  }
  auto untyped = Parse(With(kLlamaConfig, "rope_scaling", R"({"factor": 2.0})"));
  EXPECT_THAT(std::string(untyped.status().message()),
              HasSubstr("rope_scaling needs a 'rope_type'"));
}

TEST(ModelConfigTest, RopeParametersOfNewerTransformers) {
  auto config = Parse(With(kLlamaConfig, "rope_parameters",
                           R"({"rope_type": "linear", "factor": 2.0, "rope_theta": 500000.0})"));
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->rope_scaling.type, RopeScaling::Type::kLinear);
  EXPECT_DOUBLE_EQ(config->rope_scaling.factor, 2.0);
  EXPECT_DOUBLE_EQ(config->rope_theta, 500000.0);

  config = Parse(With(kLlamaConfig, "rope_parameters", R"({"rope_type": "yarn", "factor": 2.0})"));
  EXPECT_TRUE(absl::IsUnimplemented(config.status()));
  EXPECT_THAT(std::string(config.status().message()), HasSubstr("rope_parameters type 'yarn'"));
}

TEST(LoadModelConfigTest, GenerationConfigOverridesBosAndAddsEosIds) {
  TempDir dir;
  dir.Write("config.json", kLlamaConfig);
  dir.Write("generation_config.json",
            R"({"bos_token_id": 7, "eos_token_id": [2, 9, 10], "do_sample": true})");
  auto config = LoadModelConfig(dir.path());
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->bos_token_id, 7);
  EXPECT_THAT(config->eos_token_ids, ElementsAre(2, 9, 10));
}

TEST(LoadModelConfigTest, GenerationConfigIsOptionalAndMayOmitIds) {
  TempDir dir;
  dir.Write("config.json", kLlamaConfig);
  auto config = LoadModelConfig(dir.path());
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->bos_token_id, 1);
  EXPECT_THAT(config->eos_token_ids, ElementsAre(2));

  dir.Write("generation_config.json", R"({"temperature": 0.6})");
  config = LoadModelConfig(dir.path());
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->bos_token_id, 1);
  EXPECT_THAT(config->eos_token_ids, ElementsAre(2));
}

TEST(LoadModelConfigTest, BadGenerationConfigIsNamed) {
  TempDir dir;
  dir.Write("config.json", kLlamaConfig);
  dir.Write("generation_config.json", R"({"eos_token_id": "2"})");
  auto config = LoadModelConfig(dir.path());
  EXPECT_TRUE(absl::IsInvalidArgument(config.status()));
  EXPECT_THAT(std::string(config.status().message()),
              HasSubstr(dir.path() + "/generation_config.json: key 'eos_token_id'"));
}

TEST(LoadModelConfigTest, MissingConfigIsNotFoundAndErrorsNameThePath) {
  TempDir dir;
  auto config = LoadModelConfig(dir.path());
  EXPECT_TRUE(absl::IsNotFound(config.status()));
  EXPECT_THAT(std::string(config.status().message()),
              HasSubstr(dir.path() + "/config.json: not found"));

  dir.Write("config.json", With(kLlamaConfig, "vocab_size", "\"big\""));
  config = LoadModelConfig(dir.path());
  EXPECT_THAT(std::string(config.status().message()),
              HasSubstr(dir.path() + "/config.json: key 'vocab_size' must be an integer"));
}

}  // namespace
}  // namespace spqr
