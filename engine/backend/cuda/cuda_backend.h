// The CUDA backend (engine/backend/backend.h): the LLaMA forward of llama_forward.h over
// CudaForwardOps (cuda_forward_ops.h), with every weight and the paged KV pool in device memory.
//
//   Weights     uploaded once at creation (cuda_weights.h): dense tensors as stored (fp16, bf16,
//               or fp32 kept fp32), norms, SpQR layers in the GPU layout, lm_head (a tied one
//               shares embed_tokens' copy).
//   KV pool     fp32, the CPU pool's layout (paged_attention.cuh); AllocateKvPool frees the old
//               pool, then refuses a pool larger than the device's free memory (cudaMemGetInfo)
//               with RESOURCE_EXHAUSTED naming the sizes (the backend then has no pool).
//   Transfers   per step, one host-to-device copy of the metadata (ids, positions, sequences,
//               block tables, logit rows) from pinned memory, and one copy of the logits back.
//   Execution   one stream and one cuBLAS handle per backend; a step's ops are enqueued in order
//               and Forward returns once the logits are on the host.
//   Errors      every CUDA/cuBLAS error is a Status naming the op ("CUDA op Project: ...").
//               After a failed step the backend asks the device whether the error was sticky
//               (illegal address, kernel assert, ...: IsStickyCudaError); if so the backend is
//               broken: health() and every later Forward/AllocateKvPool return that error at once,
//               and only a new process recovers.
//
// Forward and AllocateKvPool must not run concurrently (the engine thread owns the backend);
// memory_stats and health may be called from any thread.
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "engine/backend/backend.h"
#include "engine/model/llama_weights.h"

namespace spqr {

struct CudaBackendOptions {
  int device = 0;  // CUDA device ordinal (after CUDA_VISIBLE_DEVICES)
};

// Checks the model (shapes of every tensor, head_dim even and at most 256 for the attention
// kernel), selects the device, creates the stream and cuBLAS handle and uploads the weights.
// FAILED_PRECONDITION without a usable device; RESOURCE_EXHAUSTED when the weights do not fit.
absl::StatusOr<std::unique_ptr<Backend>> CreateCudaBackend(
    std::shared_ptr<const LlamaWeights> weights, const CudaBackendOptions& options);

}  // namespace spqr
