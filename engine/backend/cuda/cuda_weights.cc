#include "engine/backend/cuda/cuda_weights.h"

#include <cmath>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "engine/util/half.h"
#include "engine/util/status_macros.h"

namespace spqr {
namespace {

bool IsDenseFloat(DType d) { return d == DType::kF32 || d == DType::kF16 || d == DType::kBF16; }

std::string ShapeString(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += absl::StrFormat("%s%d", i ? ", " : "", shape[i]);
  return s + "]";
}

absl::Status CheckTensor(const TensorView& t, const std::vector<int64_t>& shape,
                         const std::string& what) {
  const std::string name = t.name.empty() ? what : t.name;
  if (t.data == nullptr) return absl::InvalidArgumentError(absl::StrFormat("%s: no data", name));
  if (!IsDenseFloat(t.dtype)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: dtype %s is not supported by the CUDA backend (F32, F16 or BF16)",
                        name, DTypeName(t.dtype)));
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
                         const std::string& what) {
  if (l.out_features != out || l.in_features != in) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: out_features/in_features %d/%d, expected %d/%d", what, l.out_features,
                        l.in_features, out, in));
  }
  if (l.spqr != nullptr) {
    if (l.spqr->out_features != out || l.spqr->in_features != in) {
      return absl::InvalidArgumentError(absl::StrFormat("%s: SpQR layer is %dx%d, expected %dx%d",
                                                        what, l.spqr->out_features,
                                                        l.spqr->in_features, out, in));
    }
  } else {
    RETURN_IF_ERROR(CheckTensor(l.weight, {out, in}, what + ".weight"));
  }
  if (l.bias) RETURN_IF_ERROR(CheckTensor(*l.bias, {out}, what + ".bias"));
  if (want_bias && !l.bias) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s.bias: missing although the config has attention biases", what));
  }
  return absl::OkStatus();
}

absl::Status CheckWeights(const LlamaWeights& w) {
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
  // The paged-attention kernel's limit (paged_attention.cuh).
  if (c.head_dim % 2 != 0 || c.head_dim > 256) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "model config: head_dim %d must be even and at most 256 for the CUDA backend", c.head_dim));
  }
  if (static_cast<int64_t>(w.layers.size()) != c.num_hidden_layers) {
    return absl::InvalidArgumentError(absl::StrFormat("weights: %d layers bound, config has %d",
                                                      w.layers.size(), c.num_hidden_layers));
  }
  const int64_t h = c.hidden_size;
  const int64_t q_out = c.num_attention_heads * c.head_dim;
  const int64_t kv_out = c.num_key_value_heads * c.head_dim;
  RETURN_IF_ERROR(CheckTensor(w.embed_tokens, {c.vocab_size, h}, "model.embed_tokens.weight"));
  RETURN_IF_ERROR(CheckTensor(w.norm, {h}, "model.norm.weight"));
  RETURN_IF_ERROR(CheckLinear(w.lm_head, c.vocab_size, h, false, "lm_head"));
  for (size_t i = 0; i < w.layers.size(); ++i) {
    const DecoderLayerWeights& l = w.layers[i];
    const std::string p = absl::StrFormat("model.layers.%d.", i);
    RETURN_IF_ERROR(CheckTensor(l.input_layernorm, {h}, p + "input_layernorm.weight"));
    RETURN_IF_ERROR(
        CheckTensor(l.post_attention_layernorm, {h}, p + "post_attention_layernorm.weight"));
    RETURN_IF_ERROR(CheckLinear(l.q_proj, q_out, h, c.attention_bias, p + "self_attn.q_proj"));
    RETURN_IF_ERROR(CheckLinear(l.k_proj, kv_out, h, c.attention_bias, p + "self_attn.k_proj"));
    RETURN_IF_ERROR(CheckLinear(l.v_proj, kv_out, h, c.attention_bias, p + "self_attn.v_proj"));
    RETURN_IF_ERROR(CheckLinear(l.o_proj, h, q_out, false, p + "self_attn.o_proj"));
    RETURN_IF_ERROR(CheckLinear(l.gate_proj, c.intermediate_size, h, false, p + "mlp.gate_proj"));
    RETURN_IF_ERROR(CheckLinear(l.up_proj, c.intermediate_size, h, false, p + "mlp.up_proj"));
    RETURN_IF_ERROR(CheckLinear(l.down_proj, h, c.intermediate_size, false, p + "mlp.down_proj"));
  }
  return absl::OkStatus();
}

float ElementToFloat(const TensorView& t, int64_t i) {
  switch (t.dtype) {
    case DType::kF16:
      return F16ToF32(t.as<uint16_t>()[i]);
    case DType::kBF16:
      return Bf16ToF32(t.as<uint16_t>()[i]);
    default:
      return t.as<float>()[i];
  }
}

// Adds the tensor's name to an upload failure (out of memory, no device).
absl::Status Named(const absl::Status& s, const std::string& name, size_t bytes) {
  if (s.ok()) return s;
  return absl::Status(s.code(), absl::StrFormat("uploading %s (%d bytes) to the device: %s", name,
                                                bytes, s.message()));
}

}  // namespace

absl::StatusOr<std::unique_ptr<CudaWeights>> CudaWeights::Upload(const LlamaWeights& w) {
  RETURN_IF_ERROR(CheckWeights(w));
  auto out = std::unique_ptr<CudaWeights>(new CudaWeights);
  // The embedding first, so that a tied lm_head finds its table.
  RETURN_IF_ERROR(out->AddTable(w.embed_tokens));
  RETURN_IF_ERROR(out->AddTable(w.norm));
  for (size_t i = 0; i < w.layers.size(); ++i) {
    const DecoderLayerWeights& l = w.layers[i];
    const std::string p = absl::StrFormat("model.layers.%d.", i);
    RETURN_IF_ERROR(out->AddTable(l.input_layernorm));
    RETURN_IF_ERROR(out->AddTable(l.post_attention_layernorm));
    RETURN_IF_ERROR(out->AddLinear(l.q_proj, p + "self_attn.q_proj"));
    RETURN_IF_ERROR(out->AddLinear(l.k_proj, p + "self_attn.k_proj"));
    RETURN_IF_ERROR(out->AddLinear(l.v_proj, p + "self_attn.v_proj"));
    RETURN_IF_ERROR(out->AddLinear(l.o_proj, p + "self_attn.o_proj"));
    RETURN_IF_ERROR(out->AddLinear(l.gate_proj, p + "mlp.gate_proj"));
    RETURN_IF_ERROR(out->AddLinear(l.up_proj, p + "mlp.up_proj"));
    RETURN_IF_ERROR(out->AddLinear(l.down_proj, p + "mlp.down_proj"));
  }
  RETURN_IF_ERROR(out->AddLinear(w.lm_head, "lm_head"));
  return out;
}

absl::Status CudaWeights::AddTable(const TensorView& t) {
  if (tables_.count(t.data) > 0) return absl::OkStatus();
  const size_t bytes = static_cast<size_t>(t.numel()) * DTypeSize(t.dtype);
  auto d = std::make_unique<DeviceTensor>();
  absl::StatusOr<DeviceBuffer> buffer = DeviceBuffer::FromHost(t.data, bytes);
  RETURN_IF_ERROR(Named(buffer.status(), t.name, bytes));
  d->buffer = *std::move(buffer);
  d->dtype = t.dtype;
  d->numel = t.numel();
  device_bytes_ += static_cast<int64_t>(bytes);
  tables_.emplace(t.data, std::move(d));
  return absl::OkStatus();
}

absl::StatusOr<const DeviceTensor*> CudaWeights::GemmWeight(const TensorView& t) {
  if (t.dtype != DType::kF32) {
    // 16-bit: as stored, shared with a table of the same memory (a tied lm_head).
    RETURN_IF_ERROR(AddTable(t));
    return tables_.at(t.data).get();
  }
  if (auto it = gemm_weights_.find(t.data); it != gemm_weights_.end()) return it->second.get();
  // fp32: cuBLAS's 16-bit path wants a 16-bit operand. fp16 keeps 3 more mantissa bits than bf16;
  // bf16 only when a value would overflow fp16.
  const int64_t n = t.numel();
  bool fits_f16 = true;
  for (int64_t i = 0; i < n && fits_f16; ++i) fits_f16 = std::abs(t.as<float>()[i]) <= 65504.0f;
  std::vector<uint16_t> converted(n);
  for (int64_t i = 0; i < n; ++i) {
    const float v = t.as<float>()[i];
    converted[i] = fits_f16 ? F32ToF16(v) : F32ToBf16(v);
  }
  auto d = std::make_unique<DeviceTensor>();
  absl::StatusOr<DeviceBuffer> buffer = DeviceBuffer::FromVector(converted);
  RETURN_IF_ERROR(Named(buffer.status(), t.name, converted.size() * 2));
  d->buffer = *std::move(buffer);
  d->dtype = fits_f16 ? DType::kF16 : DType::kBF16;
  d->numel = n;
  device_bytes_ += n * 2;
  const DeviceTensor* result = d.get();
  gemm_weights_.emplace(t.data, std::move(d));
  return result;
}

absl::Status CudaWeights::AddLinear(const LinearTensors& l, const std::string& name) {
  auto d = std::make_unique<DeviceLinear>();
  d->out_features = l.out_features;
  d->in_features = l.in_features;
  if (l.spqr != nullptr) {
    absl::StatusOr<SpqrGpuDeviceLayer> layer = SpqrGpuDeviceLayer::FromPacked(*l.spqr, name);
    RETURN_IF_ERROR(Named(layer.status(), name, 0));
    d->spqr = *std::move(layer);
    device_bytes_ += d->spqr->device_bytes();
    ++spqr_layers_;
  } else {
    ASSIGN_OR_RETURN(d->dense, GemmWeight(l.weight));
    ++dense_layers_;
  }
  if (l.bias) {
    std::vector<float> bias(l.out_features);
    for (int64_t i = 0; i < l.out_features; ++i) bias[i] = ElementToFloat(*l.bias, i);
    absl::StatusOr<DeviceBuffer> buffer = DeviceBuffer::FromVector(bias);
    RETURN_IF_ERROR(Named(buffer.status(), name + ".bias", bias.size() * 4));
    d->bias = *std::move(buffer);
    device_bytes_ += static_cast<int64_t>(bias.size() * 4);
  }
  linears_.emplace(&l, std::move(d));
  return absl::OkStatus();
}

const DeviceTensor* CudaWeights::Table(const TensorView& host) const {
  auto it = tables_.find(host.data);
  return it == tables_.end() ? nullptr : it->second.get();
}

const DeviceLinear* CudaWeights::Linear(const LinearTensors& host) const {
  auto it = linears_.find(&host);
  return it == linears_.end() ? nullptr : it->second.get();
}

}  // namespace spqr
