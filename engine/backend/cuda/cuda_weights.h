// The device copies of a model's weights for the CUDA backend. Dense tensors are uploaded as
// stored (fp16, bf16 or fp32: nothing is converted, so an fp32 checkpoint multiplies in fp32);
// SpQR layers are repacked into the GPU layout (spqr_gpu_layout.h) and uploaded. A tensor is
// found by the address of the host data it was uploaded from, so a tied lm_head (whose view
// aliases embed_tokens) is uploaded once and both names find the same device copy; a linear layer
// is found by the address of its bound LinearTensors (forward_ops.h passes the bound weights).
// No CUDA types here.
#pragma once

#include <cstdint>
#include <memory>
#include <unordered_map>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/backend/cuda/device_buffer.h"
#include "engine/backend/cuda/spqr_gpu_layout.h"
#include "engine/model/llama_weights.h"

namespace spqr {

// A dense tensor in device memory, in its stored dtype.
struct CudaTensor {
  const void* data = nullptr;
  DType dtype = DType::kF32;
  int64_t numel = 0;
};

// One linear layer on the device: either dense (`weight`) or SpQR (`spqr`), plus an optional bias.
struct CudaLinear {
  int64_t out_features = 0;
  int64_t in_features = 0;
  CudaTensor weight;                         // dense [out, in]; data null for SpQR layers
  const SpqrGpuDeviceLayer* spqr = nullptr;  // non-null for an SpQR layer
  CudaTensor bias;                           // data null without a bias
};

class CudaWeights {
 public:
  // Uploads every tensor the LLaMA forward reads (embedding, norms, projections, lm_head) to the
  // current device. RESOURCE_EXHAUSTED (naming the tensor and the bytes) when the device runs out
  // of memory; INVALID_ARGUMENT for a dtype the CUDA ops do not take.
  static absl::StatusOr<std::unique_ptr<CudaWeights>> Upload(const LlamaWeights& weights);

  // The device copy of `view`; INTERNAL naming `op` and the tensor when it was not uploaded (a
  // forward passing tensors of other weights than the backend's).
  absl::StatusOr<CudaTensor> Tensor(const TensorView& view, const char* op) const;
  absl::StatusOr<const CudaLinear*> Linear(const LinearTensors& linear, const char* op) const;

  // Device bytes of all uploaded weights (each shared tensor counted once).
  int64_t device_bytes() const { return device_bytes_; }
  int num_spqr_layers() const { return static_cast<int>(spqr_.size()); }
  int num_dense_layers() const { return num_dense_layers_; }

 private:
  absl::StatusOr<CudaTensor> UploadTensor(const TensorView& view);

  std::vector<DeviceBuffer> buffers_;
  std::vector<std::unique_ptr<SpqrGpuDeviceLayer>> spqr_;
  std::unordered_map<const void*, CudaTensor> tensors_;  // by host data address
  std::unordered_map<const LinearTensors*, CudaLinear> linears_;
  int64_t device_bytes_ = 0;
  int num_dense_layers_ = 0;
};

}  // namespace spqr
