// ForwardOps (engine/backend/forward/forward_ops.h) over device memory: the ops of the LLaMA
// forward enqueued on one CUDA stream, so that RunLlamaForward drives the CUDA backend exactly as
// it drives the CPU one.
//
//   BeginStep   sizes the activation buffers (grown, never shrunk) and uploads the step's
//               metadata (token ids, positions, sequences, block tables, logit rows) in one copy
//               from a pinned staging buffer.
//   Embed, GatherLogitRows   LaunchGatherRows (fp16/bf16/fp32 table -> fp32).
//   RmsNorm, Rope, SwiGlu    LaunchRmsNorm, LaunchRope (inverse frequencies computed on the host
//               as the CPU backend does), LaunchSiluMul.
//   Project     dense layers: the activations are cast once to the weights' 16-bit dtype
//               (LaunchCastF32; fp32 weights take them as they are) and multiplied by cuBLAS
//               (DenseGemm, fp32 accumulation); SpQR layers: SpqrLinear() below; then the bias.
//   StoreKv, Attention       LaunchStoreKv, LaunchPagedAttention over the pool (fp32, the CPU
//               pool's layout).
//   AddInPlace  LaunchAddInPlace.
//   ReadLogits  copies the logits to the host and waits for the stream.
// Every error is returned as a Status whose message starts with "CUDA op <Op>: ". The object is
// used by one thread at a time (the backend's Forward).
#pragma once

#include <cuda_runtime.h>

#include <array>
#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "engine/backend/cuda/cublas_gemm.h"
#include "engine/backend/cuda/cuda_weights.h"
#include "engine/backend/cuda/device_buffer.h"
#include "engine/backend/cuda/paged_attention.cuh"
#include "engine/backend/forward/forward_ops.h"
#include "engine/model/model_config.h"

namespace spqr {

// Page-locked host memory (cudaMallocHost), grown on demand; the staging area of the step
// metadata, so that its upload is a true asynchronous copy.
class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  ~PinnedBuffer();
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;
  // Makes room for `bytes` (contents are not kept when it grows).
  absl::Status Reserve(size_t bytes);
  void* data() { return data_; }

 private:
  void* data_ = nullptr;
  size_t size_ = 0;
};

class CudaForwardOps : public ForwardOps {
 public:
  // `weights`, `cublas` (bound to `stream`) and `inv_freq` (head_dim / 2 device floats) must
  // outlive the object. The pool is set by set_pool before the first step.
  CudaForwardOps(const ModelConfig& config, const CudaWeights& weights, cudaStream_t stream,
                 const CublasHandle& cublas, const float* inv_freq);

  void set_pool(const KvPoolDeviceView& pool) { pool_ = pool; }
  // Device bytes of the activation, metadata and scratch buffers as they stand.
  int64_t scratch_bytes() const;

  absl::Status BeginStep(const StepLayout& step) override;
  absl::Status Embed(const TensorView& embed_tokens, Act out) override;
  absl::Status RmsNorm(Act in, const TensorView& weight, float eps, Act out) override;
  absl::Status Project(Act in, std::span<const Projection> projections) override;
  absl::Status Rope(Act q, Act k) override;
  absl::Status StoreKv(int64_t layer, Act k, Act v) override;
  absl::Status Attention(int64_t layer, Act q, Act out) override;
  absl::Status SwiGlu(Act gate, Act up, Act out) override;
  absl::Status AddInPlace(Act x, Act y) override;
  absl::Status GatherLogitRows(Act in, Act out) override;
  absl::Status ReadLogits(Act logits, std::span<float> out) override;

 private:
  struct ActBuffer {
    DeviceBuffer memory;
    float* data = nullptr;
    int64_t rows = 0;
    int64_t cols = 0;
  };
  static constexpr size_t kNumActs = static_cast<size_t>(Act::kLogits) + 1;

  ActBuffer& act(Act a) { return acts_[static_cast<size_t>(a)]; }
  absl::Status DoBeginStep(const StepLayout& step);
  absl::Status DoProject(Act in, std::span<const Projection> projections);
  // y[batch, m] = x[batch, n] · W_hat^T for an SpQR layer: the one place that picks the SpQR
  // kernel (today LaunchSpqrGpuLinear, which chooses decode kernel or dequantize + cuBLAS by
  // batch size), so that a faster kernel replaces it here.
  absl::Status SpqrLinear(const SpqrGpuDeviceLayer& layer, const float* x, float* y, int64_t batch);
  PagedAttentionParams AttentionBase(int64_t layer) const;

  const ModelConfig& c_;
  const CudaWeights& weights_;
  cudaStream_t stream_;
  const CublasHandle& cublas_;
  const float* inv_freq_;
  KvPoolDeviceView pool_;

  std::array<ActBuffer, kNumActs> acts_;
  DeviceBuffer cast_;       // activations cast to the weights' 16-bit dtype
  DeviceBuffer workspace_;  // SpQR kernels' scratch
  DeviceBuffer meta_;       // the step's metadata (layout below)
  PinnedBuffer staging_;
  // Device views into meta_ for the current step.
  const int32_t* token_ids_ = nullptr;
  const int32_t* positions_ = nullptr;
  const AttentionSeqDevice* seqs_ = nullptr;
  const int32_t* block_tables_ = nullptr;
  const int32_t* logit_rows_ = nullptr;
  int32_t num_seqs_ = 0;
  int32_t rows_ = 0;
  int32_t logit_count_ = 0;
  int32_t max_positions_ = 0;
};

}  // namespace spqr
