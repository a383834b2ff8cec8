// The CUDA backend (backend.h) on one device: weights in device memory as stored (cuda_weights.h),
// the KV pool in device memory (fp32, the CPU pool's layout: paged_attention.cuh), one stream and
// one cuBLAS handle, and the LLaMA forward of RunLlamaForward over CudaForwardOps.
//
// Numerics against the CPU backend: embedding, residual adds, KV writes and gathers are exact;
// RMSNorm, RoPE, SwiGLU and attention agree to fp32 rounding; dense projections differ because
// cuBLAS multiplies 16-bit activations (the fp32 activations rounded to the weights' dtype) with
// fp32 accumulation, where the CPU multiplies fp32 activations; SpQR projections per
// spqr_gpu_linear.cuh. Greedy tokens agree on the test models
// (tests/cuda_emu/cuda_backend_e2e_test.cc states the logit tolerance).
//
// Errors: every CUDA failure is a Status naming the op (see cuda_forward_ops.h). When a step
// fails, the backend asks the device whether its context survived; after a sticky error
// (IsCudaStickyError) health() returns that error for good and Forward refuses to run.
// Forward and AllocateKvPool must not run concurrently (the engine thread owns the backend).
#pragma once

#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"
#include "engine/backend/backend.h"
#include "engine/model/llama_weights.h"

namespace spqr {

struct CudaBackendOptions {
  int device = 0;  // CUDA ordinal (after CUDA_VISIBLE_DEVICES)
  // Device memory AllocateKvPool leaves free beside the pool, for the per-step activation
  // buffers, the SpQR workspace, cuBLAS's own workspace and the CUDA context's growth.
  int64_t reserve_bytes = int64_t{512} << 20;
};

// Selects the device, uploads the weights and creates the stream. FAILED_PRECONDITION without a
// usable device (the message from the CUDA runtime), RESOURCE_EXHAUSTED when the weights do not
// fit (naming the tensor), INVALID_ARGUMENT for weights the backend cannot run (naming them).
absl::StatusOr<std::unique_ptr<Backend>> CreateCudaBackend(
    std::shared_ptr<const LlamaWeights> weights, const CudaBackendOptions& options);

}  // namespace spqr
