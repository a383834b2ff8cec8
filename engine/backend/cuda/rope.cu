#include "engine/backend/cuda/cuda_status.h"
#include "engine/backend/cuda/kernel_launch_checks.h"
#include "engine/backend/cuda/rope.cuh"
#include "engine/backend/cuda/rope_kernel.cuh"
#include "engine/util/status_macros.h"

namespace spqr {

absl::Status LaunchRope(const RopeParams& p, cudaStream_t stream) {
  constexpr char kOp[] = "LaunchRope";
  RETURN_IF_ERROR(CheckInRange(p.num_tokens, 0, kMaxKernelRows, kOp, "num_tokens"));
  RETURN_IF_ERROR(CheckInRange(p.head_dim, 2, 1 << 16, kOp, "head_dim"));
  if (p.head_dim % 2 != 0) {
    return absl::InvalidArgumentError("LaunchRope: head_dim must be even");
  }
  RETURN_IF_ERROR(CheckInRange(p.num_q_heads, 1, 1 << 16, kOp, "num_q_heads"));
  RETURN_IF_ERROR(CheckInRange(p.num_kv_heads, 0, 1 << 16, kOp, "num_kv_heads"));
  if (p.num_tokens == 0) return absl::OkStatus();
  RETURN_IF_ERROR(CheckNotNull(p.q, kOp, "q"));
  RETURN_IF_ERROR(CheckNotNull(p.positions, kOp, "positions"));
  RETURN_IF_ERROR(CheckNotNull(p.inv_freq, kOp, "inv_freq"));
  RETURN_IF_ERROR(CheckInRange(p.q_token_stride, int64_t{p.num_q_heads} * p.head_dim,
                               int64_t{1} << 40, kOp, "q_token_stride"));
  if (p.num_kv_heads > 0) {
    RETURN_IF_ERROR(CheckNotNull(p.k, kOp, "k"));
    RETURN_IF_ERROR(CheckInRange(p.k_token_stride, int64_t{p.num_kv_heads} * p.head_dim,
                                 int64_t{1} << 40, kOp, "k_token_stride"));
  }
  SPQR_LAUNCH(kernels::RopeKernel, static_cast<unsigned>(p.num_tokens), kernels::kRopeThreads, 0,
              stream, p);
  CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

}  // namespace spqr
