// Rotary position embedding in the Hugging Face "rotate half" layout (LLaMA, Mistral, Qwen2): for
// a head vector x of head_dim d, pair i < d/2 is (x[i], x[i + d/2]) and is rotated by the angle
// position * inv_freq[i]:
//   x'[i]       = x[i] * cos - x[i + d/2] * sin
//   x'[i + d/2] = x[i + d/2] * cos + x[i] * sin
// Applied in place to the query and key heads of each token, in fp32. The angle is formed in fp32
// (float(position) * inv_freq[i]) as transformers does, then its sine and cosine in full precision.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "absl/status/status.h"

namespace spqr {

struct RopeParams {
  float* q = nullptr;  // [num_tokens, num_q_heads, head_dim], token t at q + t * q_token_stride
  float* k = nullptr;  // [num_tokens, num_kv_heads, head_dim], token t at k + t * k_token_stride
  const int32_t* positions = nullptr;  // [num_tokens] device array, each >= 0
  // [head_dim / 2] device array of inverse frequencies, already including any rope_scaling
  // (linear, llama3): the host computes them once from the model config.
  const float* inv_freq = nullptr;
  int64_t num_tokens = 0;
  int32_t num_q_heads = 0;
  int32_t num_kv_heads = 0;    // 0 rotates q only (k may then be null)
  int32_t head_dim = 0;        // even
  int64_t q_token_stride = 0;  // in elements, >= num_q_heads * head_dim
  int64_t k_token_stride = 0;  // in elements, >= num_kv_heads * head_dim
};

// Validates (INVALID_ARGUMENT naming the field) and enqueues the rotation on `stream`.
// num_tokens == 0 is a no-op.
absl::Status LaunchRope(const RopeParams& params, cudaStream_t stream);

}  // namespace spqr
