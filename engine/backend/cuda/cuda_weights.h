// The model's weights in device memory for the CUDA backend, found by the address of the bound
// host objects (TensorView data, LinearTensors) that RunLlamaForward passes to the ops.
//
// What is uploaded, and how:
//   - the embedding table and the norm weights as stored (fp32, fp16 or bf16; the kernels read
//     each kind);
//   - dense projections as stored when fp16/bf16 (cuBLAS multiplies them with fp32 accumulation);
//     fp32 ones are converted once to fp16, or to bf16 when a value exceeds fp16's range;
//   - biases converted to fp32 (added after the product);
//   - SpQR layers repacked into the GPU layout (spqr_gpu_layout.h) and multiplied by
//     LaunchSpqrGpuLinear;
//   - a tied lm_head (its weight is the embedding's memory) reuses the embedding's device table
//     when that is 16-bit; only an fp32 tied table needs its 16-bit GEMM copy beside it.
// No CUDA types in this header.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <unordered_map>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/backend/cuda/device_buffer.h"
#include "engine/backend/cuda/spqr_gpu_layout.h"
#include "engine/model/llama_weights.h"

namespace spqr {

// A dense tensor on the device, row-major.
struct DeviceTensor {
  DeviceBuffer buffer;
  DType dtype = DType::kF16;
  int64_t numel = 0;
};

// One projection on the device: either `dense` (a 16-bit [out, in] matrix, possibly shared) or
// `spqr`; `bias` is [out] fp32 or empty.
struct DeviceLinear {
  const DeviceTensor* dense = nullptr;
  std::optional<SpqrGpuDeviceLayer> spqr;
  DeviceBuffer bias;
  int64_t out_features = 0;
  int64_t in_features = 0;
};

class CudaWeights {
 public:
  // Checks the weights against the config (shapes, dtypes, layer count, GQA ratio; errors name
  // the tensor) and uploads them to the current device. RESOURCE_EXHAUSTED when they do not fit,
  // naming the tensor and the bytes.
  static absl::StatusOr<std::unique_ptr<CudaWeights>> Upload(const LlamaWeights& weights);

  // The device copy of a bound tensor (embedding table, norm weight), or null.
  const DeviceTensor* Table(const TensorView& host) const;
  // The device form of a bound projection, or null.
  const DeviceLinear* Linear(const LinearTensors& host) const;

  int64_t device_bytes() const { return device_bytes_; }
  int spqr_layers() const { return spqr_layers_; }
  int dense_layers() const { return dense_layers_; }

 private:
  absl::Status AddTable(const TensorView& t);
  absl::Status AddLinear(const LinearTensors& l, const std::string& name);
  absl::StatusOr<const DeviceTensor*> GemmWeight(const TensorView& t);

  // Keyed by the host data pointer: tables as stored, GEMM operands (16-bit).
  std::unordered_map<const void*, std::unique_ptr<DeviceTensor>> tables_;
  std::unordered_map<const void*, std::unique_ptr<DeviceTensor>> gemm_weights_;
  // Keyed by the address of the bound LinearTensors.
  std::unordered_map<const LinearTensors*, std::unique_ptr<DeviceLinear>> linears_;
  int64_t device_bytes_ = 0;
  int spqr_layers_ = 0;
  int dense_layers_ = 0;
};

}  // namespace spqr
