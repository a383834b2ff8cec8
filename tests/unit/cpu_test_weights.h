// Tiny random LLaMA-family weights built in memory, for the CPU backend tests (no checkpoint file
// needed). Deterministic for a given seed.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <deque>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "engine/model/llama_weights.h"
#include "engine/util/half.h"

namespace spqr::testing {

// Random values rounded to `dtype`, stored as raw bytes, plus their exact fp32 values.
struct RandomTensor {
  std::vector<uint8_t> bytes;
  std::vector<float> values;
};

inline RandomTensor MakeRandomTensor(DType dtype, int64_t n, float scale, std::mt19937* rng) {
  std::normal_distribution<float> dist(0.0f, scale);
  RandomTensor t;
  t.values.resize(n);
  t.bytes.resize(n * DTypeSize(dtype));
  for (int64_t i = 0; i < n; ++i) {
    const float v = dist(*rng);
    if (dtype == DType::kF32) {
      t.values[i] = v;
      std::memcpy(t.bytes.data() + 4 * i, &v, 4);
    } else {
      const uint16_t h = dtype == DType::kF16 ? F32ToF16(v) : F32ToBf16(v);
      t.values[i] = dtype == DType::kF16 ? F16ToF32(h) : Bf16ToF32(h);
      std::memcpy(t.bytes.data() + 2 * i, &h, 2);
    }
  }
  return t;
}

struct TestModelSpec {
  std::string model_type = "llama";
  int64_t vocab = 61;
  int64_t hidden = 96;
  int64_t intermediate = 160;
  int64_t layers = 2;
  int64_t heads = 6;
  int64_t kv_heads = 2;
  int64_t head_dim = 16;
  DType dtype = DType::kBF16;
  bool bias = false;
  bool tie_embeddings = false;
  uint32_t seed = 1234;
};

// Owns the bytes behind every TensorView of `weights`.
struct OwnedWeights {
  std::deque<RandomTensor> storage;
  LlamaWeights weights;
};

inline std::shared_ptr<const LlamaWeights> MakeTestWeights(const TestModelSpec& spec) {
  auto owned = std::make_shared<OwnedWeights>();
  std::mt19937 rng(spec.seed);
  auto tensor = [&](const std::string& name, std::vector<int64_t> shape, float scale,
                    float offset = 0.0f) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    RandomTensor t = MakeRandomTensor(spec.dtype, n, scale, &rng);
    if (offset != 0.0f) {  // norm weights near 1, as in trained models
      for (int64_t i = 0; i < n; ++i) {
        const float v = t.values[i] + offset;
        if (spec.dtype == DType::kF32) {
          std::memcpy(t.bytes.data() + 4 * i, &v, 4);
          t.values[i] = v;
        } else {
          const uint16_t h = spec.dtype == DType::kF16 ? F32ToF16(v) : F32ToBf16(v);
          std::memcpy(t.bytes.data() + 2 * i, &h, 2);
          t.values[i] = spec.dtype == DType::kF16 ? F16ToF32(h) : Bf16ToF32(h);
        }
      }
    }
    owned->storage.push_back(std::move(t));
    TensorView v;
    v.name = name;
    v.dtype = spec.dtype;
    v.shape = shape;
    v.data = owned->storage.back().bytes.data();
    v.nbytes = owned->storage.back().bytes.size();
    return v;
  };
  auto linear = [&](const std::string& name, int64_t out, int64_t in, bool bias) {
    LinearTensors l;
    l.weight = tensor(name + ".weight", {out, in}, 1.0f / std::sqrt(static_cast<float>(in)));
    if (bias) l.bias = tensor(name + ".bias", {out}, 0.1f);
    l.out_features = out;
    l.in_features = in;
    return l;
  };

  ModelConfig& c = owned->weights.config;
  c.model_type = spec.model_type;
  c.vocab_size = spec.vocab;
  c.hidden_size = spec.hidden;
  c.intermediate_size = spec.intermediate;
  c.num_hidden_layers = spec.layers;
  c.num_attention_heads = spec.heads;
  c.num_key_value_heads = spec.kv_heads;
  c.head_dim = spec.head_dim;
  c.max_position_embeddings = 256;
  c.rms_norm_eps = 1e-5;
  c.rope_theta = 10000.0;
  c.tie_word_embeddings = spec.tie_embeddings;
  c.attention_bias = spec.bias;

  LlamaWeights& w = owned->weights;
  w.embed_tokens = tensor("model.embed_tokens.weight", {spec.vocab, spec.hidden}, 1.0f);
  for (int64_t i = 0; i < spec.layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    DecoderLayerWeights l;
    l.input_layernorm = tensor(p + "input_layernorm.weight", {spec.hidden}, 0.1f, 1.0f);
    l.q_proj = linear(p + "self_attn.q_proj", spec.heads * spec.head_dim, spec.hidden, spec.bias);
    l.k_proj =
        linear(p + "self_attn.k_proj", spec.kv_heads * spec.head_dim, spec.hidden, spec.bias);
    l.v_proj =
        linear(p + "self_attn.v_proj", spec.kv_heads * spec.head_dim, spec.hidden, spec.bias);
    l.o_proj = linear(p + "self_attn.o_proj", spec.hidden, spec.heads * spec.head_dim, false);
    l.post_attention_layernorm =
        tensor(p + "post_attention_layernorm.weight", {spec.hidden}, 0.1f, 1.0f);
    l.gate_proj = linear(p + "mlp.gate_proj", spec.intermediate, spec.hidden, false);
    l.up_proj = linear(p + "mlp.up_proj", spec.intermediate, spec.hidden, false);
    l.down_proj = linear(p + "mlp.down_proj", spec.hidden, spec.intermediate, false);
    w.layers.push_back(std::move(l));
  }
  w.norm = tensor("model.norm.weight", {spec.hidden}, 0.1f, 1.0f);
  if (spec.tie_embeddings) {
    w.lm_head.weight = w.embed_tokens;
    w.lm_head.out_features = spec.vocab;
    w.lm_head.in_features = spec.hidden;
  } else {
    w.lm_head = linear("lm_head", spec.vocab, spec.hidden, false);
  }
  return std::shared_ptr<const LlamaWeights>(owned, &owned->weights);
}

}  // namespace spqr::testing
