// Kernel body of LaunchRope (rope.cuh), compiled by nvcc for the device and by g++ for the CPU
// harness (launch.cuh).
#pragma once

#include <cstdint>

#include "engine/backend/cuda/launch.cuh"
#include "engine/backend/cuda/rope.cuh"

namespace spqr::kernels {

inline constexpr int kRopeThreads = 128;

// One block per token; a thread rotates pair i of one head at a time. The sine and cosine are
// recomputed per head rather than staged in shared memory: the kernel is bound by the q/k bytes,
// and sincosf (full precision, not __sincosf: positions reach 10^5 where the fast form loses
// digits) is cheap beside them.
__global__ void __launch_bounds__(kRopeThreads) RopeKernel(RopeParams p) {
  const int64_t t = blockIdx.x;
  const int half = p.head_dim / 2;
  const float position = static_cast<float>(p.positions[t]);
  const int total_pairs = (p.num_q_heads + p.num_kv_heads) * half;
  for (int idx = threadIdx.x; idx < total_pairs; idx += kRopeThreads) {
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

}  // namespace spqr::kernels
