// ForwardOps (engine/backend/forward/forward_ops.h) over device memory: every op enqueues its
// kernel (or cuBLAS call) on the backend's one stream, reading the weights CudaWeights uploaded;
// ReadLogits copies the logits back through pinned memory and waits for the stream. The layer
// loop itself is RunLlamaForward's, shared with the CPU backend.
//
// Per step, BeginStep packs the step's metadata (token ids, positions, the sequences and their
// block tables, the logit rows) into one pinned staging buffer and sends it with one copy.
// Activation buffers, the 16-bit cast of GEMM inputs and the SpQR workspace are device buffers
// that grow to the largest step seen and are then reused.
//
// Errors: every failure is a Status whose message starts with "CUDA backend <op>: " (the op of
// forward_ops.h), followed by the launch function's or the CUDA runtime's own message.
// Not thread-safe: the backend's Forward is called by one thread at a time.
#pragma once

#include <cuda_runtime.h>

#include <array>
#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "engine/backend/cuda/cublas_gemm.h"
#include "engine/backend/cuda/cuda_weights.h"
#include "engine/backend/cuda/device_buffer.h"
#include "engine/backend/cuda/paged_attention.cuh"
#include "engine/backend/forward/forward_ops.h"
#include "engine/model/model_config.h"

namespace spqr {

// Host memory allocated with cudaMallocHost (page-locked, so async copies really are async).
class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  ~PinnedBuffer();
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;
  // Grows to at least `bytes` (contents are not kept).
  absl::Status Reserve(size_t bytes);
  void* data() { return data_; }
  size_t size() const { return size_; }

 private:
  void* data_ = nullptr;
  size_t size_ = 0;
};

class CudaForwardOps : public ForwardOps {
 public:
  // `weights` and `stream`/`cublas` (bound to `stream`) must outlive the ops. `inv_freq` is the
  // model's RoPE table ([head_dim / 2], scaling applied; cpu::ComputeRopeInvFreq).
  CudaForwardOps(const ModelConfig& config, const CudaWeights& weights, cudaStream_t stream,
                 const CublasHandle& cublas, DeviceBuffer inv_freq);
  ~CudaForwardOps() override;

  // The pool the KV ops address (set after every AllocateKvPool).
  void set_kv_pool(const KvPoolDeviceView& pool) { pool_ = pool; }
  // Device bytes of the per-step buffers now held (activations, casts, workspace, metadata).
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
  static constexpr int kNumActs = static_cast<int>(Act::kLogits) + 1;
  int64_t Cols(Act a) const;
  int64_t Rows(Act a) const;
  float* Data(Act a) { return acts_[static_cast<int>(a)].as<float>(); }
  // in -> 16-bit copy of `dtype` for cuBLAS, made once per (Project call, dtype).
  absl::StatusOr<const void*> CastInput(Act in, DType dtype);
  absl::Status ProjectOne(Act in, const Projection& p);

  const ModelConfig& c_;
  const CudaWeights& weights_;
  cudaStream_t stream_;
  const CublasHandle& cublas_;
  DeviceBuffer inv_freq_;
  KvPoolDeviceView pool_;

  // The step.
  int64_t rows_ = 0;        // n
  int64_t logit_rows_ = 0;  // L
  int32_t num_seqs_ = 0;
  int32_t max_positions_ = 0;
  std::array<DeviceBuffer, kNumActs> acts_;
  DeviceBuffer meta_;                // device copy of the staging buffer
  PinnedBuffer meta_staging_;        // ids | positions | seqs | block tables | logit rows
  cudaEvent_t meta_sent_ = nullptr;  // recorded after the metadata copy
  const int32_t* d_ids_ = nullptr;
  const int32_t* d_positions_ = nullptr;
  const AttentionSeqDevice* d_seqs_ = nullptr;
  const int32_t* d_block_tables_ = nullptr;
  const int32_t* d_logit_rows_ = nullptr;

  // Project's scratch.
  DeviceBuffer cast_;
  Act cast_of_ = Act::kX;
  DType cast_dtype_ = DType::kF32;  // kF32: no valid cast
  DeviceBuffer spqr_workspace_;
  PinnedBuffer logits_staging_;
};

}  // namespace spqr
