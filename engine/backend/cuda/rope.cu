#include "engine/backend/cuda/cuda_status.h"
#include "engine/backend/cuda/kernel_launch_checks.h"
#include "engine/backend/cuda/rope.cuh"
#include "engine/util/status_macros.h"

namespace spqr {
namespace {

constexpr int kThreads = 128;

// One block per token; a thread rotates pair i of one head at a time. The sine and cosine are
// recomputed per head rather than staged in shared memory: the kernel is bound by the q/k bytes,
// and sincosf (full precision, not __sincosf: positions reach 10^5 where the fast form loses
// digits) is cheap beside them.
__global__ void __launch_bounds__(kThreads) RopeKernel(RopeParams p) {
  const int64_t t = blockIdx.x;
  const int half = p.head_dim / 2;
  const float position = static_cast<float>(p.positions[t]);
  const int total_pairs = (p.num_q_heads + p.num_kv_heads) * half;
  for (int idx = threadIdx.x; idx < total_pairs; idx += kThreads) {
    const int head = idx / half;
    const int i = idx % half;
    float* x =
        head < p.num_q_heads
            ? p.q + t * p.q_token_stride + static_cast<int64_t>(head) * p.head_dim
            : p.k + t * p.k_token_stride + static_cast<int64_t>(head - p.num_q_heads) * p.head_dim;
    float sin_value;
    float cos_value;
    sincosf(position * p.inv_freq[i], &sin_value, &cos_value);
    const float x1 = x[i];
    const float x2 = x[i + half];
    x[i] = x1 * cos_value - x2 * sin_value;
    x[i + half] = x2 * cos_value + x1 * sin_value;
  }
}

}  // namespace

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
  RopeKernel<<<static_cast<unsigned>(p.num_tokens), kThreads, 0, stream>>>(p);
  CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

}  // namespace spqr
