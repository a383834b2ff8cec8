#include "engine/backend/cuda/cuda_weights.h"

#include <cmath>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "engine/backend/forward/weight_checks.h"
#include "engine/util/half.h"
#include "engine/util/status_macros.h"

namespace spqr {
namespace {

// The model checks shared with the CPU backend, plus the paged-attention kernel's head_dim limit.
absl::Status CheckWeights(const LlamaWeights& w) {
  RETURN_IF_ERROR(CheckLlamaWeights(w, "CUDA"));
  if (w.config.head_dim > 256) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "model config: head_dim %d exceeds 256, the CUDA backend's paged-attention limit",
        w.config.head_dim));
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
