#include "engine/backend/cuda/cuda_weights.h"

#include <string>

#include "absl/strings/str_format.h"
#include "engine/util/status_macros.h"

namespace spqr {
namespace {

absl::Status Named(const absl::Status& status, const std::string& name) {
  if (status.ok()) return status;
  return absl::Status(status.code(),
                      absl::StrFormat("uploading %s to the device: %s", name, status.message()));
}

}  // namespace

absl::StatusOr<CudaTensor> CudaWeights::UploadTensor(const TensorView& view) {
  if (view.data == nullptr) {
    return absl::InvalidArgumentError(absl::StrFormat("%s: no data bound", view.name));
  }
  if (view.dtype != DType::kF16 && view.dtype != DType::kBF16 && view.dtype != DType::kF32) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: dtype %s; the CUDA backend takes F16, BF16 or F32 dense tensors",
                        view.name, DTypeName(view.dtype)));
  }
  if (view.nbytes != static_cast<size_t>(view.numel()) * DTypeSize(view.dtype)) {
    return absl::InvalidArgumentError(absl::StrFormat("%s: %d bytes bound for %d elements of %s",
                                                      view.name, view.nbytes, view.numel(),
                                                      DTypeName(view.dtype)));
  }
  if (auto it = tensors_.find(view.data); it != tensors_.end()) return it->second;  // tied
  absl::StatusOr<DeviceBuffer> buffer = DeviceBuffer::FromHost(view.data, view.nbytes);
  if (!buffer.ok()) return Named(buffer.status(), view.name);
  const CudaTensor tensor{buffer->data(), view.dtype, view.numel()};
  device_bytes_ += static_cast<int64_t>(view.nbytes);
  buffers_.push_back(*std::move(buffer));
  tensors_[view.data] = tensor;
  return tensor;
}

absl::StatusOr<std::unique_ptr<CudaWeights>> CudaWeights::Upload(const LlamaWeights& w) {
  auto out = std::unique_ptr<CudaWeights>(new CudaWeights);
  auto linear = [&](const LinearTensors& l, const std::string& name) -> absl::Status {
    CudaLinear d;
    d.out_features = l.out_features;
    d.in_features = l.in_features;
    if (l.spqr != nullptr) {
      absl::StatusOr<SpqrGpuDeviceLayer> layer = SpqrGpuDeviceLayer::FromPacked(*l.spqr, name);
      if (!layer.ok()) return Named(layer.status(), name);
      out->spqr_.push_back(std::make_unique<SpqrGpuDeviceLayer>(*std::move(layer)));
      d.spqr = out->spqr_.back().get();
      out->device_bytes_ += d.spqr->device_bytes();
    } else {
      ASSIGN_OR_RETURN(d.weight, out->UploadTensor(l.weight));
      ++out->num_dense_layers_;
    }
    if (l.bias) {
      ASSIGN_OR_RETURN(d.bias, out->UploadTensor(*l.bias));
    }
    out->linears_[&l] = d;
    return absl::OkStatus();
  };
  RETURN_IF_ERROR(out->UploadTensor(w.embed_tokens).status());
  RETURN_IF_ERROR(out->UploadTensor(w.norm).status());
  for (size_t i = 0; i < w.layers.size(); ++i) {
    const DecoderLayerWeights& l = w.layers[i];
    const std::string p = absl::StrFormat("model.layers.%d.", i);
    RETURN_IF_ERROR(out->UploadTensor(l.input_layernorm).status());
    RETURN_IF_ERROR(out->UploadTensor(l.post_attention_layernorm).status());
    RETURN_IF_ERROR(linear(l.q_proj, p + "self_attn.q_proj"));
    RETURN_IF_ERROR(linear(l.k_proj, p + "self_attn.k_proj"));
    RETURN_IF_ERROR(linear(l.v_proj, p + "self_attn.v_proj"));
    RETURN_IF_ERROR(linear(l.o_proj, p + "self_attn.o_proj"));
    RETURN_IF_ERROR(linear(l.gate_proj, p + "mlp.gate_proj"));
    RETURN_IF_ERROR(linear(l.up_proj, p + "mlp.up_proj"));
    RETURN_IF_ERROR(linear(l.down_proj, p + "mlp.down_proj"));
  }
  RETURN_IF_ERROR(linear(w.lm_head, "lm_head"));  // a tied lm_head finds embed_tokens' copy
  return out;
}

absl::StatusOr<CudaTensor> CudaWeights::Tensor(const TensorView& view, const char* op) const {
  auto it = tensors_.find(view.data);
  if (it == tensors_.end()) {
    return absl::InternalError(absl::StrFormat(
        "%s: tensor %s is not among the weights the CUDA backend uploaded", op, view.name));
  }
  return it->second;
}

absl::StatusOr<const CudaLinear*> CudaWeights::Linear(const LinearTensors& l,
                                                      const char* op) const {
  auto it = linears_.find(&l);
  if (it == linears_.end()) {
    return absl::InternalError(absl::StrFormat(
        "%s: linear layer %s[%d, %d] is not among the weights the CUDA backend uploaded", op,
        l.spqr != nullptr ? "(SpQR)" : l.weight.name, l.out_features, l.in_features));
  }
  return &it->second;
}

}  // namespace spqr
