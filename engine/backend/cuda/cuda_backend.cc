#include "engine/backend/cuda/cuda_backend.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <mutex>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "engine/backend/cpu/rope.h"
#include "engine/backend/cuda/cublas_gemm.h"
#include "engine/backend/cuda/cuda_forward_ops.h"
#include "engine/backend/cuda/cuda_status.h"
#include "engine/backend/cuda/cuda_weights.h"
#include "engine/backend/cuda/device_buffer.h"
#include "engine/backend/cuda/device_query.h"
#include "engine/backend/cuda/spqr_gpu_linear.cuh"
#include "engine/backend/forward/llama_forward.h"
#include "engine/util/status_macros.h"

namespace spqr {
namespace {

// Owns the backend's stream.
class Stream {
 public:
  Stream() = default;
  ~Stream() {
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  absl::Status Create() {
    CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    return absl::OkStatus();
  }
  cudaStream_t get() const { return stream_; }

 private:
  cudaStream_t stream_ = nullptr;
};

class CudaBackend : public Backend {
 public:
  CudaBackend(std::shared_ptr<const LlamaWeights> weights, const CudaBackendOptions& options,
              CudaDeviceInfo device)
      : w_(std::move(weights)), options_(options), device_(std::move(device)) {}

  // Second half of construction: everything that can fail.
  absl::Status Init() {
    ASSIGN_OR_RETURN(device_weights_, CudaWeights::Upload(*w_));
    RETURN_IF_ERROR(stream_.Create());
    ASSIGN_OR_RETURN(cublas_, CublasHandle::Create(stream_.get()));
    const ModelConfig& c = w_->config;
    ASSIGN_OR_RETURN(DeviceBuffer inv_freq, DeviceBuffer::FromVector(cpu::ComputeRopeInvFreq(
                                                c.head_dim, c.rope_theta, c.rope_scaling)));
    ops_ = std::make_unique<CudaForwardOps>(w_->config, *device_weights_, stream_.get(), cublas_,
                                            std::move(inv_freq));
    return absl::OkStatus();
  }

  ~CudaBackend() override {
    // Nothing may still run on buffers about to be freed (errors here have nowhere to go).
    if (stream_.get() != nullptr) cudaStreamSynchronize(stream_.get());
  }

  std::string name() const override { return "cuda"; }

  std::string description() const override {
    return absl::StrFormat(
        "cuda: cuda:%d %s %s; %d SpQR layers (GPU layout: decode kernel up to batch %d, "
        "dequantize + cuBLAS above), %d dense layers (cuBLAS, %s weights); %.1f MiB of weights on "
        "the device",
        device_.ordinal, device_.name, device_.ArchName(), device_weights_->spqr_layers(),
        kSpqrGpuDecodeMaxBatch, device_weights_->dense_layers(), DTypeName(w_->embed_tokens.dtype),
        device_weights_->device_bytes() / 1048576.0);
  }

  int64_t KvBytesPerToken() const override {
    const ModelConfig& c = w_->config;
    return 2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim *
           static_cast<int64_t>(sizeof(float));
  }

  absl::Status AllocateKvPool(const KvPoolShape& shape) override;
  KvPoolShape kv_pool_shape() const override { return pool_shape_; }
  absl::Status Forward(const StepPlan& plan, StepOutput* out) override;
  BackendMemoryStats memory_stats() const override;
  absl::Status health() const override {
    std::lock_guard<std::mutex> lock(broken_mu_);
    return broken_;
  }

 private:
  // After a failed step: is the device context still usable? A sticky error shows on any call.
  void CheckDevice(const absl::Status& cause);

  std::shared_ptr<const LlamaWeights> w_;
  const CudaBackendOptions options_;
  const CudaDeviceInfo device_;
  // Declaration order is destruction order reversed: ops and buffers before the stream.
  Stream stream_;
  CublasHandle cublas_;
  std::unique_ptr<CudaWeights> device_weights_;
  DeviceBuffer pool_;
  KvPoolShape pool_shape_{0, 0};
  std::unique_ptr<CudaForwardOps> ops_;
  // Set by the engine thread, read by any (health(), memory_stats() from metrics scrapes).
  mutable std::mutex broken_mu_;
  absl::Status broken_;
};

absl::Status CudaBackend::AllocateKvPool(const KvPoolShape& shape) {
  RETURN_IF_ERROR(health());
  if (shape.num_blocks <= 0 || shape.block_size <= 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("KV pool: num_blocks %d and block_size %d must be positive",
                        shape.num_blocks, shape.block_size));
  }
  CUDA_RETURN_IF_ERROR(cudaSetDevice(device_.ordinal));
  int64_t bytes = 0;
  const bool overflow = __builtin_mul_overflow(
      static_cast<int64_t>(shape.num_blocks) * shape.block_size, KvBytesPerToken(), &bytes);
  // The old pool goes first: the new one may take its place.
  pool_ = DeviceBuffer();
  pool_shape_ = {0, 0};
  ops_->set_kv_pool({});
  size_t free_bytes = 0, total_bytes = 0;
  CUDA_RETURN_IF_ERROR(cudaMemGetInfo(&free_bytes, &total_bytes));
  const int64_t usable = static_cast<int64_t>(free_bytes) - options_.reserve_bytes;
  if (overflow || bytes > usable) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "KV pool of %d blocks x %d tokens x %d bytes per token = %s bytes does not fit on cuda:%d "
        "(%s): %d of %d bytes are free after the weights (%d bytes), and %d are kept for "
        "activations and workspaces; engine.kv_cache_bytes may be at most %d here",
        shape.num_blocks, shape.block_size, KvBytesPerToken(),
        overflow ? std::string("more than 2^63") : absl::StrCat(bytes), device_.ordinal,
        device_.name, free_bytes, total_bytes, device_weights_->device_bytes(),
        options_.reserve_bytes, std::max<int64_t>(usable, 0)));
  }
  ASSIGN_OR_RETURN(pool_, DeviceBuffer::Allocate(static_cast<size_t>(bytes)));
  // Zero, like the CPU pool: slots are always written before they are read, but a stale NaN
  // multiplied by a zero softmax weight would still poison a sum.
  RETURN_IF_ERROR(pool_.Fill(0));
  KvPoolDeviceView view;
  view.data = pool_.as<float>();
  view.num_layers = static_cast<int32_t>(w_->config.num_hidden_layers);
  view.kv_heads = static_cast<int32_t>(w_->config.num_key_value_heads);
  view.head_dim = static_cast<int32_t>(w_->config.head_dim);
  view.num_blocks = shape.num_blocks;
  view.block_size = shape.block_size;
  ops_->set_kv_pool(view);
  pool_shape_ = shape;
  return absl::OkStatus();
}

absl::Status CudaBackend::Forward(const StepPlan& plan, StepOutput* out) {
  if (const absl::Status broken = health(); !broken.ok()) {
    return absl::Status(broken.code(), absl::StrCat("CUDA backend unusable after a device fault: ",
                                                    broken.message()));
  }
  RETURN_IF_ERROR(ValidateStepPlan(plan, w_->config.vocab_size, pool_shape_, "CUDA"));
  // The current device is per host thread; the engine thread is not the one that created us.
  CUDA_RETURN_IF_ERROR(cudaSetDevice(device_.ordinal));
  absl::Status status = RunLlamaForward(*w_, plan, *ops_, out);
  if (status.ok()) {
    // Steps without logits never waited for the stream; a fault of theirs shows here.
    const cudaError_t e = cudaStreamSynchronize(stream_.get());
    if (e != cudaSuccess) {
      status = CudaErrorToStatus(e, "Forward: cudaStreamSynchronize", __FILE__, __LINE__);
    }
  }
  if (!status.ok()) CheckDevice(status);
  return status;
}

void CudaBackend::CheckDevice(const absl::Status& cause) {
  cudaError_t e = cudaStreamSynchronize(stream_.get());
  if (e == cudaSuccess) e = cudaPeekAtLastError();
  if (!IsCudaStickyError(e)) return;
  std::lock_guard<std::mutex> lock(broken_mu_);
  broken_ = absl::InternalError(absl::StrFormat(
      "cuda:%d reported %s (%s), which poisons the CUDA context of this process; the step "
      "failed with: %s",
      device_.ordinal, cudaGetErrorName(e), cudaGetErrorString(e), cause.message()));
}

BackendMemoryStats CudaBackend::memory_stats() const {
  BackendMemoryStats s;
  size_t free_bytes = 0, total_bytes = 0;
  // Called from other threads (metrics scrapes), whose current device may be another.
  if (health().ok() && cudaSetDevice(device_.ordinal) == cudaSuccess &&
      cudaMemGetInfo(&free_bytes, &total_bytes) == cudaSuccess) {
    s.device_total_bytes = static_cast<int64_t>(total_bytes);
    s.device_used_bytes = static_cast<int64_t>(total_bytes - free_bytes);
  }
  s.weight_bytes = device_weights_->device_bytes();
  s.kv_pool_bytes = static_cast<int64_t>(pool_.size());
  return s;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Backend>> CreateCudaBackend(
    std::shared_ptr<const LlamaWeights> weights, const CudaBackendOptions& options) {
  if (weights == nullptr) return absl::InvalidArgumentError("CreateCudaBackend: no weights");
  if (options.reserve_bytes < 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("CUDA backend: reserve_bytes %d is negative", options.reserve_bytes));
  }
  ASSIGN_OR_RETURN(const std::vector<CudaDeviceInfo> devices, QueryCudaDevices());
  if (options.device < 0 || options.device >= static_cast<int>(devices.size())) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "CUDA backend: device %d requested, %d visible%s", options.device, devices.size(),
        devices.empty() ? " (CUDA_VISIBLE_DEVICES may hide them)" : ""));
  }
  const CudaDeviceInfo& device = devices[options.device];
  if (!device.can_run_kernels) {
    return absl::FailedPreconditionError(
        absl::StrFormat("CUDA backend: cuda:%d %s (%s) cannot run this build's kernels: %s",
                        device.ordinal, device.name, device.ArchName(), device.unsupported_reason));
  }
  CUDA_RETURN_IF_ERROR(cudaSetDevice(device.ordinal));
  auto backend = std::make_unique<CudaBackend>(std::move(weights), options, device);
  RETURN_IF_ERROR(backend->Init());
  return std::unique_ptr<Backend>(std::move(backend));
}

}  // namespace spqr
