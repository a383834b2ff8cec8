#include "engine/backend/cuda/cuda_backend.h"

#include <cuda_runtime.h>

#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
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

constexpr int kMaxHeadDim = 256;  // LaunchPagedAttention's limit (kAttnMaxHeadDim)

// The model checks the CUDA ops rely on; each names the tensor. (A generic weight-shape check
// shared with the CPU backend is to replace the per-tensor part.)
absl::Status CheckModel(const LlamaWeights& w) {
  const ModelConfig& c = w.config;
  if (c.vocab_size <= 0 || c.hidden_size <= 0 || c.intermediate_size <= 0 ||
      c.num_hidden_layers <= 0 || c.num_attention_heads <= 0 || c.num_key_value_heads <= 0 ||
      c.head_dim <= 0 || c.num_attention_heads % c.num_key_value_heads != 0) {
    return absl::InvalidArgumentError(
        "model config: sizes must be positive and num_attention_heads a multiple of "
        "num_key_value_heads");
  }
  if (c.head_dim % 2 != 0 || c.head_dim > kMaxHeadDim) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "model config: head_dim %d; the CUDA attention kernel takes even head_dim <= %d",
        c.head_dim, kMaxHeadDim));
  }
  if (static_cast<int64_t>(w.layers.size()) != c.num_hidden_layers) {
    return absl::InvalidArgumentError(absl::StrFormat("weights: %d layers bound, config has %d",
                                                      w.layers.size(), c.num_hidden_layers));
  }
  const int64_t h = c.hidden_size, q = c.num_attention_heads * c.head_dim,
                kv = c.num_key_value_heads * c.head_dim, inter = c.intermediate_size;
  auto tensor = [](const TensorView& t, std::vector<int64_t> shape) -> absl::Status {
    if (t.shape != shape) {
      return absl::InvalidArgumentError(absl::StrFormat("%s: shape [%s], expected [%s]", t.name,
                                                        absl::StrJoin(t.shape, ", "),
                                                        absl::StrJoin(shape, ", ")));
    }
    return absl::OkStatus();
  };
  auto linear = [&](const LinearTensors& l, int64_t out, int64_t in,
                    const std::string& name) -> absl::Status {
    if (l.out_features != out || l.in_features != in) {
      return absl::InvalidArgumentError(absl::StrFormat("%s: [%d, %d], expected [%d, %d]", name,
                                                        l.out_features, l.in_features, out, in));
    }
    if (l.spqr == nullptr) {
      RETURN_IF_ERROR(tensor(l.weight, {out, in}));
    }
    if (l.bias) {
      RETURN_IF_ERROR(tensor(*l.bias, {out}));
    }
    return absl::OkStatus();
  };
  RETURN_IF_ERROR(tensor(w.embed_tokens, {c.vocab_size, h}));
  RETURN_IF_ERROR(tensor(w.norm, {h}));
  RETURN_IF_ERROR(linear(w.lm_head, c.vocab_size, h, "lm_head"));
  for (size_t i = 0; i < w.layers.size(); ++i) {
    const DecoderLayerWeights& l = w.layers[i];
    const std::string p = absl::StrFormat("model.layers.%d.", i);
    RETURN_IF_ERROR(tensor(l.input_layernorm, {h}));
    RETURN_IF_ERROR(tensor(l.post_attention_layernorm, {h}));
    RETURN_IF_ERROR(linear(l.q_proj, q, h, p + "self_attn.q_proj"));
    RETURN_IF_ERROR(linear(l.k_proj, kv, h, p + "self_attn.k_proj"));
    RETURN_IF_ERROR(linear(l.v_proj, kv, h, p + "self_attn.v_proj"));
    RETURN_IF_ERROR(linear(l.o_proj, h, q, p + "self_attn.o_proj"));
    RETURN_IF_ERROR(linear(l.gate_proj, inter, h, p + "mlp.gate_proj"));
    RETURN_IF_ERROR(linear(l.up_proj, inter, h, p + "mlp.up_proj"));
    RETURN_IF_ERROR(linear(l.down_proj, h, inter, p + "mlp.down_proj"));
  }
  return absl::OkStatus();
}

// Owns a CUDA stream.
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
  CudaBackend(std::shared_ptr<const LlamaWeights> weights, CudaDeviceInfo device)
      : w_(std::move(weights)), c_(w_->config), device_(std::move(device)) {}

  absl::Status Init() {
    CUDA_RETURN_IF_ERROR(cudaSetDevice(device_.ordinal));
    RETURN_IF_ERROR(stream_.Create());
    ASSIGN_OR_RETURN(cublas_, CublasHandle::Create(stream_.get()));
    ASSIGN_OR_RETURN(weights_, CudaWeights::Upload(*w_));
    const std::vector<float> inv_freq =
        cpu::ComputeRopeInvFreq(c_.head_dim, c_.rope_theta, c_.rope_scaling);
    ASSIGN_OR_RETURN(inv_freq_, DeviceBuffer::FromVector(inv_freq));
    ops_ = std::make_unique<CudaForwardOps>(c_, *weights_, stream_.get(), cublas_,
                                            inv_freq_.as<float>());
    return absl::OkStatus();
  }

  std::string name() const override { return "cuda"; }

  std::string description() const override {
    return absl::StrFormat(
        "cuda: device %d %s %s (%d SMs); weights %.1f MiB on the device; SpQR layers: %d "
        "(LaunchSpqrGpuLinear: decode kernel up to batch %d, else dequantize + cuBLAS); dense "
        "layers: %d (cuBLAS, %s as stored); KV pool fp32",
        device_.ordinal, device_.name, device_.ArchName(), device_.multiprocessor_count,
        weights_->device_bytes() / 1048576.0, weights_->num_spqr_layers(), kSpqrGpuDecodeMaxBatch,
        weights_->num_dense_layers(), DTypeName(w_->embed_tokens.dtype));
  }

  int64_t KvBytesPerToken() const override {
    return 2 * c_.num_hidden_layers * c_.num_key_value_heads * c_.head_dim *
           static_cast<int64_t>(sizeof(float));
  }

  absl::Status AllocateKvPool(const KvPoolShape& shape) override {
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
    // Free the old pool first: its memory counts as free for the new one.
    pool_ = DeviceBuffer();
    pool_shape_ = {0, 0};
    ops_->set_pool({});
    size_t free_bytes = 0, total_bytes = 0;
    CUDA_RETURN_IF_ERROR(cudaMemGetInfo(&free_bytes, &total_bytes));
    if (overflow || bytes > static_cast<int64_t>(free_bytes)) {
      return absl::ResourceExhaustedError(absl::StrFormat(
          "KV pool of %d blocks x %d tokens x %d bytes per token = %s bytes exceeds the %d bytes "
          "free on CUDA device %d (%d total; the weights take %d); lower engine.kv_cache_bytes",
          shape.num_blocks, shape.block_size, KvBytesPerToken(),
          overflow ? std::string("more than 2^63") : absl::StrCat(bytes), free_bytes,
          device_.ordinal, total_bytes, weights_->device_bytes()));
    }
    ASSIGN_OR_RETURN(pool_, DeviceBuffer::Allocate(static_cast<size_t>(bytes)));
    // Zeroed, as the CPU pool is (the kernels never read a slot before it is written).
    CUDA_RETURN_IF_ERROR(cudaMemsetAsync(pool_.data(), 0, pool_.size(), stream_.get()));
    CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_.get()));
    KvPoolDeviceView view;
    view.data = pool_.as<float>();
    view.num_layers = static_cast<int32_t>(c_.num_hidden_layers);
    view.kv_heads = static_cast<int32_t>(c_.num_key_value_heads);
    view.head_dim = static_cast<int32_t>(c_.head_dim);
    view.num_blocks = shape.num_blocks;
    view.block_size = shape.block_size;
    ops_->set_pool(view);
    pool_shape_ = shape;
    return absl::OkStatus();
  }

  KvPoolShape kv_pool_shape() const override { return pool_shape_; }

  absl::Status Forward(const StepPlan& plan, StepOutput* out) override {
    RETURN_IF_ERROR(health());
    RETURN_IF_ERROR(ValidateStepPlan(plan, c_.vocab_size, pool_shape_, "cuda"));
    CUDA_RETURN_IF_ERROR(cudaSetDevice(device_.ordinal));
    absl::Status status = RunLlamaForward(*w_, plan, *ops_, out);
    if (!status.ok()) CheckSticky(status);
    return status;
  }

  BackendMemoryStats memory_stats() const override {
    BackendMemoryStats s;
    size_t free_bytes = 0, total_bytes = 0;
    if (cudaSetDevice(device_.ordinal) == cudaSuccess &&
        cudaMemGetInfo(&free_bytes, &total_bytes) == cudaSuccess) {
      s.device_used_bytes = static_cast<int64_t>(total_bytes - free_bytes);
      s.device_total_bytes = static_cast<int64_t>(total_bytes);
    }
    s.weight_bytes = weights_->device_bytes();
    s.kv_pool_bytes = static_cast<int64_t>(pool_.size());
    return s;
  }

  absl::Status health() const override {
    std::lock_guard<std::mutex> lock(mu_);
    return broken_;
  }

 private:
  // After a failed step: if the device reports a sticky error, the backend is broken for good.
  void CheckSticky(const absl::Status& failure) {
    cudaError_t error = cudaStreamSynchronize(stream_.get());
    if (error == cudaSuccess) error = cudaPeekAtLastError();
    if (!IsStickyCudaError(error)) {
      cudaGetLastError();  // a non-sticky error is reported once; clear it for the next step
      return;
    }
    std::lock_guard<std::mutex> lock(mu_);
    broken_ = absl::InternalError(absl::StrFormat(
        "CUDA backend unusable: device %d reported %s (%s), a sticky error that corrupts its "
        "context; only a restart recovers (the failing step: %s)",
        device_.ordinal, cudaGetErrorName(error), cudaGetErrorString(error), failure.message()));
  }

  std::shared_ptr<const LlamaWeights> w_;
  const ModelConfig& c_;
  const CudaDeviceInfo device_;
  Stream stream_;
  CublasHandle cublas_;
  std::unique_ptr<CudaWeights> weights_;
  DeviceBuffer inv_freq_;
  std::unique_ptr<CudaForwardOps> ops_;
  DeviceBuffer pool_;
  KvPoolShape pool_shape_{0, 0};
  mutable std::mutex mu_;
  absl::Status broken_;  // guarded by mu_
};

}  // namespace

absl::StatusOr<std::unique_ptr<Backend>> CreateCudaBackend(
    std::shared_ptr<const LlamaWeights> weights, const CudaBackendOptions& options) {
  if (weights == nullptr) return absl::InvalidArgumentError("CreateCudaBackend: no weights");
  RETURN_IF_ERROR(CheckModel(*weights));
  ASSIGN_OR_RETURN(const std::vector<CudaDeviceInfo> devices, QueryCudaDevices());
  if (options.device < 0 || options.device >= static_cast<int>(devices.size())) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "CUDA backend: device %d requested, %d visible", options.device, devices.size()));
  }
  const CudaDeviceInfo& device = devices[options.device];
  if (!device.can_run_kernels) {
    return absl::FailedPreconditionError(
        absl::StrCat("CUDA backend: device ", options.device,
                     " cannot run this build's kernels: ", device.unsupported_reason));
  }
  auto backend = std::make_unique<CudaBackend>(std::move(weights), device);
  RETURN_IF_ERROR(backend->Init());
  return backend;
}

}  // namespace spqr
