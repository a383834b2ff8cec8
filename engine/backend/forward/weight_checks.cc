#include "engine/backend/forward/weight_checks.h"

#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "engine/util/status_macros.h"

namespace spqr {
namespace {

bool IsDenseFloat(DType dtype) {
  return dtype == DType::kF32 || dtype == DType::kF16 || dtype == DType::kBF16;
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += absl::StrFormat("%s%d", i ? ", " : "", shape[i]);
  return s + "]";
}

// Checks that `t` is a dense float tensor of exactly `shape` whose bytes are all present.
absl::Status CheckTensor(const TensorView& t, const std::vector<int64_t>& shape,
                         const std::string& what, const char* backend) {
  const std::string name = t.name.empty() ? what : t.name;
  if (t.data == nullptr) return absl::InvalidArgumentError(absl::StrFormat("%s: no data", name));
  if (!IsDenseFloat(t.dtype)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: dtype %s is not supported by the %s backend (F32, F16 or BF16)", name,
                        DTypeName(t.dtype), backend));
  }
  if (t.shape != shape) {
    return absl::InvalidArgumentError(absl::StrFormat("%s: shape %s, expected %s", name,
                                                      ShapeString(t.shape), ShapeString(shape)));
  }
  if (t.nbytes < static_cast<size_t>(t.numel()) * DTypeSize(t.dtype)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: %d bytes, too few for shape %s", name, t.nbytes, ShapeString(shape)));
  }
  return absl::OkStatus();
}

absl::Status CheckLinear(const LinearTensors& l, int64_t out, int64_t in, bool want_bias,
                         const std::string& what, const char* backend) {
  if (l.out_features != out || l.in_features != in) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: out_features/in_features %d/%d, expected %d/%d", what, l.out_features,
                        l.in_features, out, in));
  }
  if (l.spqr != nullptr) {
    // Packed SpQR layer: validated when bound (SpqrLayerFromTensors); only the shape is rechecked.
    if (l.spqr->out_features != out || l.spqr->in_features != in) {
      return absl::InvalidArgumentError(absl::StrFormat("%s: SpQR layer is %dx%d, expected %dx%d",
                                                        what, l.spqr->out_features,
                                                        l.spqr->in_features, out, in));
    }
  } else {
    RETURN_IF_ERROR(CheckTensor(l.weight, {out, in}, what + ".weight", backend));
  }
  if (l.bias) RETURN_IF_ERROR(CheckTensor(*l.bias, {out}, what + ".bias", backend));
  if (want_bias && !l.bias) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s.bias: missing although the config has attention biases", what));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status CheckLlamaWeights(const LlamaWeights& w, const char* backend) {
  const ModelConfig& c = w.config;
  if (c.vocab_size <= 0 || c.hidden_size <= 0 || c.intermediate_size <= 0 ||
      c.num_hidden_layers <= 0 || c.num_attention_heads <= 0 || c.num_key_value_heads <= 0 ||
      c.head_dim <= 0) {
    return absl::InvalidArgumentError(
        "model config: vocab_size, hidden_size, intermediate_size, num_hidden_layers, "
        "num_attention_heads, num_key_value_heads and head_dim must all be positive");
  }
  if (c.num_attention_heads % c.num_key_value_heads != 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "model config: num_attention_heads %d is not a multiple of num_key_value_heads %d",
        c.num_attention_heads, c.num_key_value_heads));
  }
  if (c.head_dim % 2 != 0 || c.head_dim > 1024) {
    return absl::InvalidArgumentError(
        absl::StrFormat("model config: head_dim %d must be even and at most 1024", c.head_dim));
  }
  if (static_cast<int64_t>(w.layers.size()) != c.num_hidden_layers) {
    return absl::InvalidArgumentError(absl::StrFormat("weights: %d layers bound, config has %d",
                                                      w.layers.size(), c.num_hidden_layers));
  }
  const int64_t h = c.hidden_size;
  const int64_t q_out = c.num_attention_heads * c.head_dim;
  const int64_t kv_out = c.num_key_value_heads * c.head_dim;
  RETURN_IF_ERROR(
      CheckTensor(w.embed_tokens, {c.vocab_size, h}, "model.embed_tokens.weight", backend));
  RETURN_IF_ERROR(CheckTensor(w.norm, {h}, "model.norm.weight", backend));
  RETURN_IF_ERROR(CheckLinear(w.lm_head, c.vocab_size, h, false, "lm_head", backend));
  for (size_t i = 0; i < w.layers.size(); ++i) {
    const DecoderLayerWeights& l = w.layers[i];
    const std::string p = absl::StrFormat("model.layers.%d.", i);
    RETURN_IF_ERROR(CheckTensor(l.input_layernorm, {h}, p + "input_layernorm.weight", backend));
    RETURN_IF_ERROR(CheckTensor(l.post_attention_layernorm, {h},
                                p + "post_attention_layernorm.weight", backend));
    RETURN_IF_ERROR(
        CheckLinear(l.q_proj, q_out, h, c.attention_bias, p + "self_attn.q_proj", backend));
    RETURN_IF_ERROR(
        CheckLinear(l.k_proj, kv_out, h, c.attention_bias, p + "self_attn.k_proj", backend));
    RETURN_IF_ERROR(
        CheckLinear(l.v_proj, kv_out, h, c.attention_bias, p + "self_attn.v_proj", backend));
    RETURN_IF_ERROR(CheckLinear(l.o_proj, h, q_out, false, p + "self_attn.o_proj", backend));
    RETURN_IF_ERROR(
        CheckLinear(l.gate_proj, c.intermediate_size, h, false, p + "mlp.gate_proj", backend));
    RETURN_IF_ERROR(
        CheckLinear(l.up_proj, c.intermediate_size, h, false, p + "mlp.up_proj", backend));
    RETURN_IF_ERROR(
        CheckLinear(l.down_proj, h, c.intermediate_size, false, p + "mlp.down_proj", backend));
  }
  return absl::OkStatus();
}

}  // namespace spqr
