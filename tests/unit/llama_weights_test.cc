#include "engine/model/llama_weights.h"

#include <map>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/unit/safetensors_test_util.h"

namespace spqr {
namespace {

using ::spqr::testing::BuildSafetensors;
using ::spqr::testing::BytesOf;
using ::spqr::testing::TempDir;
using ::spqr::testing::TestTensor;
using ::spqr::testing::ZeroTensor;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

// vocab 16, hidden 8, intermediate 12, 2 layers, 2 query heads sharing 1 kv head of dim 4.
ModelConfig TinyConfig() {
  ModelConfig config;
  config.model_type = "llama";
  config.vocab_size = 16;
  config.hidden_size = 8;
  config.intermediate_size = 12;
  config.num_hidden_layers = 2;
  config.num_attention_heads = 2;
  config.num_key_value_heads = 1;
  config.head_dim = 4;
  config.max_position_embeddings = 64;
  return config;
}

// Every tensor the config needs, keyed by name, all BF16 zeros except where a test overrides.
std::map<std::string, TestTensor> TinyTensors(const ModelConfig& c, bool with_bias) {
  std::map<std::string, TestTensor> t;
  auto add = [&](const std::string& name, std::vector<int64_t> shape) {
    t[name] = ZeroTensor(name, "BF16", std::move(shape));
  };
  const int64_t q = c.num_attention_heads * c.head_dim, kv = c.num_key_value_heads * c.head_dim;
  add("model.embed_tokens.weight", {c.vocab_size, c.hidden_size});
  for (int i = 0; i < c.num_hidden_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    add(p + "input_layernorm.weight", {c.hidden_size});
    add(p + "self_attn.q_proj.weight", {q, c.hidden_size});
    add(p + "self_attn.k_proj.weight", {kv, c.hidden_size});
    add(p + "self_attn.v_proj.weight", {kv, c.hidden_size});
    if (with_bias) {
      add(p + "self_attn.q_proj.bias", {q});
      add(p + "self_attn.k_proj.bias", {kv});
      add(p + "self_attn.v_proj.bias", {kv});
    }
    add(p + "self_attn.o_proj.weight", {c.hidden_size, q});
    add(p + "post_attention_layernorm.weight", {c.hidden_size});
    add(p + "mlp.gate_proj.weight", {c.intermediate_size, c.hidden_size});
    add(p + "mlp.up_proj.weight", {c.intermediate_size, c.hidden_size});
    add(p + "mlp.down_proj.weight", {c.hidden_size, c.intermediate_size});
  }
  add("model.norm.weight", {c.hidden_size});
  add("lm_head.weight", {c.vocab_size, c.hidden_size});
  return t;
}

absl::StatusOr<std::shared_ptr<const LlamaWeights>> Bind(
    const TempDir& dir, const std::map<std::string, TestTensor>& tensors,
    const ModelConfig& config) {
  std::vector<TestTensor> list;
  for (const auto& [name, tensor] : tensors) list.push_back(tensor);
  dir.Write("model.safetensors", BuildSafetensors(list));
  auto checkpoint = Checkpoint::Open(dir.path());
  if (!checkpoint.ok()) return checkpoint.status();
  return BindLlamaWeights(std::shared_ptr<const Checkpoint>(*std::move(checkpoint)), config);
}

TEST(LlamaWeightsTest, BindsEveryTensorWithShapes) {
  TempDir dir;
  const ModelConfig config = TinyConfig();
  auto tensors = TinyTensors(config, false);
  // Distinct values in the final norm, to see the data come through the binding.
  tensors["model.norm.weight"] = TestTensor{
      "model.norm.weight", "F32", {8}, BytesOf(std::vector<float>{1, 2, 3, 4, 5, 6, 7, 8})};
  auto weights = Bind(dir, tensors, config);
  ASSERT_TRUE(weights.ok()) << weights.status();
  const LlamaWeights& w = **weights;
  EXPECT_EQ(w.config.hidden_size, 8);
  EXPECT_THAT(w.embed_tokens.shape, ElementsAre(16, 8));
  ASSERT_EQ(w.layers.size(), 2u);
  for (const DecoderLayerWeights& layer : w.layers) {
    EXPECT_THAT(layer.input_layernorm.shape, ElementsAre(8));
    EXPECT_THAT(layer.q_proj.weight.shape, ElementsAre(8, 8));
    EXPECT_EQ(layer.q_proj.out_features, 8);
    EXPECT_EQ(layer.q_proj.in_features, 8);
    EXPECT_THAT(layer.k_proj.weight.shape, ElementsAre(4, 8));
    EXPECT_EQ(layer.k_proj.out_features, 4);
    EXPECT_THAT(layer.v_proj.weight.shape, ElementsAre(4, 8));
    EXPECT_THAT(layer.o_proj.weight.shape, ElementsAre(8, 8));
    EXPECT_FALSE(layer.q_proj.bias.has_value());
    EXPECT_THAT(layer.gate_proj.weight.shape, ElementsAre(12, 8));
    EXPECT_THAT(layer.up_proj.weight.shape, ElementsAre(12, 8));
    EXPECT_THAT(layer.down_proj.weight.shape, ElementsAre(8, 12));
    EXPECT_EQ(layer.down_proj.in_features, 12);
  }
  EXPECT_EQ(w.layers[1].k_proj.weight.name, "model.layers.1.self_attn.k_proj.weight");
  EXPECT_EQ(w.norm.dtype, DType::kF32);
  EXPECT_EQ(w.norm.as<float>()[7], 8.0f);
  EXPECT_THAT(w.lm_head.weight.shape, ElementsAre(16, 8));
  EXPECT_NE(w.lm_head.weight.data, w.embed_tokens.data);
  EXPECT_EQ(w.lm_head.out_features, 16);
  ASSERT_NE(w.checkpoint, nullptr);
}

TEST(LlamaWeightsTest, ViewsOutliveTheCallersCheckpointPointer) {
  TempDir dir;
  const ModelConfig config = TinyConfig();
  auto tensors = TinyTensors(config, false);
  tensors["model.norm.weight"] =
      TestTensor{"model.norm.weight", "F32", {8}, BytesOf(std::vector<float>(8, 0.5f))};
  std::shared_ptr<const LlamaWeights> weights;
  {
    auto bound = Bind(dir, tensors, config);  // the only other checkpoint reference dies here
    ASSERT_TRUE(bound.ok()) << bound.status();
    weights = *bound;
  }
  EXPECT_EQ(weights->norm.as<float>()[3], 0.5f);
}

TEST(LlamaWeightsTest, TiedEmbeddingsAliasTheEmbeddingMatrix) {
  TempDir dir;
  ModelConfig config = TinyConfig();
  config.tie_word_embeddings = true;
  auto tensors = TinyTensors(config, false);
  tensors.erase("lm_head.weight");
  auto weights = Bind(dir, tensors, config);
  ASSERT_TRUE(weights.ok()) << weights.status();
  EXPECT_EQ((*weights)->lm_head.weight.data, (*weights)->embed_tokens.data);
  EXPECT_EQ((*weights)->lm_head.weight.name, "model.embed_tokens.weight");
  EXPECT_EQ((*weights)->lm_head.out_features, 16);
  EXPECT_EQ((*weights)->lm_head.in_features, 8);
}

TEST(LlamaWeightsTest, MissingLmHeadWithoutTyingIsAnError) {
  TempDir dir;
  const ModelConfig config = TinyConfig();
  auto tensors = TinyTensors(config, false);
  tensors.erase("lm_head.weight");
  auto weights = Bind(dir, tensors, config);
  EXPECT_TRUE(absl::IsNotFound(weights.status())) << weights.status();
  EXPECT_THAT(std::string(weights.status().message()),
              HasSubstr("tensor 'lm_head.weight' not found in checkpoint " + dir.path()));
  EXPECT_THAT(std::string(weights.status().message()), HasSubstr("tie_word_embeddings"));
}

TEST(LlamaWeightsTest, MissingTensorIsNamed) {
  TempDir dir;
  const ModelConfig config = TinyConfig();
  auto tensors = TinyTensors(config, false);
  tensors.erase("model.layers.1.mlp.up_proj.weight");
  auto weights = Bind(dir, tensors, config);
  EXPECT_TRUE(absl::IsNotFound(weights.status())) << weights.status();
  EXPECT_EQ(weights.status().message(),
            "tensor 'model.layers.1.mlp.up_proj.weight' not found in checkpoint " + dir.path());
}

TEST(LlamaWeightsTest, WrongShapeNamesExpectedAndFound) {
  TempDir dir;
  const ModelConfig config = TinyConfig();
  auto tensors = TinyTensors(config, false);
  // A k_proj sized for full multi-head attention while the config says 1 kv head.
  tensors["model.layers.1.self_attn.k_proj.weight"] =
      ZeroTensor("model.layers.1.self_attn.k_proj.weight", "BF16", {8, 8});
  auto weights = Bind(dir, tensors, config);
  EXPECT_TRUE(absl::IsInvalidArgument(weights.status())) << weights.status();
  EXPECT_EQ(weights.status().message(), "tensor 'model.layers.1.self_attn.k_proj.weight' in " +
                                            dir.path() + ": expected shape [4, 8], found [8, 8]");
}

TEST(LlamaWeightsTest, WrongShapeOfNormAndEmbedding) {
  TempDir dir;
  const ModelConfig config = TinyConfig();
  auto tensors = TinyTensors(config, false);
  tensors["model.norm.weight"] = ZeroTensor("model.norm.weight", "BF16", {1, 8});
  auto weights = Bind(dir, tensors, config);
  EXPECT_THAT(
      std::string(weights.status().message()),
      HasSubstr("'model.norm.weight' in " + dir.path() + ": expected shape [8], found [1, 8]"));

  tensors = TinyTensors(config, false);
  tensors["model.embed_tokens.weight"] = ZeroTensor("model.embed_tokens.weight", "BF16", {17, 8});
  weights = Bind(dir, tensors, config);
  EXPECT_THAT(std::string(weights.status().message()),
              HasSubstr("expected shape [16, 8], found [17, 8]"));
}

TEST(LlamaWeightsTest, NonFloatDtypeIsRejected) {
  TempDir dir;
  const ModelConfig config = TinyConfig();
  auto tensors = TinyTensors(config, false);
  tensors["model.layers.0.mlp.down_proj.weight"] =
      ZeroTensor("model.layers.0.mlp.down_proj.weight", "I32", {8, 12});
  auto weights = Bind(dir, tensors, config);
  EXPECT_TRUE(absl::IsInvalidArgument(weights.status())) << weights.status();
  EXPECT_EQ(weights.status().message(),
            "tensor 'model.layers.0.mlp.down_proj.weight' in " + dir.path() +
                ": dtype I32 is not supported for dense weights (expected F32, F16 or BF16)");
}

TEST(LlamaWeightsTest, MixedFloatDtypesAreAccepted) {
  TempDir dir;
  const ModelConfig config = TinyConfig();
  auto tensors = TinyTensors(config, false);
  tensors["model.layers.0.input_layernorm.weight"] =
      ZeroTensor("model.layers.0.input_layernorm.weight", "F32", {8});
  tensors["model.layers.0.mlp.up_proj.weight"] =
      ZeroTensor("model.layers.0.mlp.up_proj.weight", "F16", {12, 8});
  auto weights = Bind(dir, tensors, config);
  ASSERT_TRUE(weights.ok()) << weights.status();
  EXPECT_EQ((*weights)->layers[0].input_layernorm.dtype, DType::kF32);
  EXPECT_EQ((*weights)->layers[0].up_proj.weight.dtype, DType::kF16);
}

TEST(LlamaWeightsTest, AttentionBiasesAreBoundWhenConfigured) {
  TempDir dir;
  ModelConfig config = TinyConfig();
  config.model_type = "qwen2";
  config.attention_bias = true;
  auto weights = Bind(dir, TinyTensors(config, true), config);
  ASSERT_TRUE(weights.ok()) << weights.status();
  const DecoderLayerWeights& layer = (*weights)->layers[1];
  ASSERT_TRUE(layer.q_proj.bias.has_value());
  EXPECT_THAT(layer.q_proj.bias->shape, ElementsAre(8));
  ASSERT_TRUE(layer.k_proj.bias.has_value());
  EXPECT_THAT(layer.k_proj.bias->shape, ElementsAre(4));
  ASSERT_TRUE(layer.v_proj.bias.has_value());
  EXPECT_FALSE(layer.o_proj.bias.has_value());

  auto tensors = TinyTensors(config, true);
  tensors.erase("model.layers.0.self_attn.v_proj.bias");
  weights = Bind(dir, tensors, config);
  EXPECT_TRUE(absl::IsNotFound(weights.status()));
  EXPECT_THAT(std::string(weights.status().message()),
              HasSubstr("'model.layers.0.self_attn.v_proj.bias'"));
}

TEST(LlamaWeightsTest, UnexpectedBiasIsAnError) {
  TempDir dir;
  const ModelConfig config = TinyConfig();  // llama without attention_bias
  ModelConfig with_bias = config;
  with_bias.attention_bias = true;
  auto weights = Bind(dir, TinyTensors(with_bias, true), config);
  EXPECT_TRUE(absl::IsInvalidArgument(weights.status())) << weights.status();
  EXPECT_THAT(std::string(weights.status().message()),
              HasSubstr("tensor 'model.layers.0.self_attn.q_proj.bias' in " + dir.path() +
                        " is present but the config has no bias"));
}

TEST(LlamaWeightsTest, TensorsOfLayersBeyondTheConfigAreAnError) {
  TempDir dir;
  ModelConfig bigger = TinyConfig();
  bigger.num_hidden_layers = 3;
  auto weights = Bind(dir, TinyTensors(bigger, false), TinyConfig());
  EXPECT_TRUE(absl::IsInvalidArgument(weights.status())) << weights.status();
  EXPECT_THAT(std::string(weights.status().message()), HasSubstr("belongs to layer 2"));
  EXPECT_THAT(std::string(weights.status().message()), HasSubstr("num_hidden_layers=2"));
}

TEST(LlamaWeightsTest, UnrelatedExtraTensorsAreIgnored) {
  TempDir dir;
  const ModelConfig config = TinyConfig();
  auto tensors = TinyTensors(config, false);
  // Old checkpoints store RoPE's inverse frequencies; they are recomputed, not read.
  tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] =
      ZeroTensor("model.layers.0.self_attn.rotary_emb.inv_freq", "F32", {2});
  EXPECT_TRUE(Bind(dir, tensors, config).ok());
}

// The committed test model (tools/make_test_model.py) loads end to end.
TEST(LlamaWeightsTest, BindsTheCommittedTestModel) {
  const std::string dir = std::string(SPQR_SOURCE_DIR) + "/tests/data/test-model";
  auto config = LoadModelConfig(dir);
  ASSERT_TRUE(config.ok()) << config.status();
  auto checkpoint = Checkpoint::Open(dir);
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  auto weights =
      BindLlamaWeights(std::shared_ptr<const Checkpoint>(*std::move(checkpoint)), *config);
  ASSERT_TRUE(weights.ok()) << weights.status();
  EXPECT_EQ((*weights)->layers.size(), static_cast<size_t>(config->num_hidden_layers));
  EXPECT_THAT((*weights)->embed_tokens.shape, ElementsAre(config->vocab_size, config->hidden_size));
  EXPECT_EQ((*weights)->embed_tokens.dtype, DType::kBF16);
}

TEST(LlamaWeightsTest, NullCheckpointIsRejected) {
  auto weights = BindLlamaWeights(nullptr, TinyConfig());
  EXPECT_TRUE(absl::IsInvalidArgument(weights.status()));
}

}  // namespace
}  // namespace spqr
