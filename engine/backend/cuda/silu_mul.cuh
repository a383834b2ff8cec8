// The SwiGLU activation of LLaMA's MLP: out = silu(gate) * up, silu(g) = g / (1 + exp(-g)),
// elementwise in fp32. gate and up may be two halves of one fused [rows, 2 * cols] projection
// output (pass the row strides) or separate matrices.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "absl/status/status.h"

namespace spqr {

struct SiluMulParams {
  const float* gate = nullptr;  // [rows, cols], row i at gate + i * gate_row_stride
  const float* up = nullptr;    // [rows, cols], row i at up + i * up_row_stride
  float* output = nullptr;      // [rows, cols]; may equal gate or up (in place)
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t gate_row_stride = 0;    // in elements, >= cols
  int64_t up_row_stride = 0;      // in elements, >= cols
  int64_t output_row_stride = 0;  // in elements, >= cols
};

// Validates (INVALID_ARGUMENT naming the field) and enqueues the kernel on `stream`.
// rows == 0 is a no-op.
absl::Status LaunchSiluMul(const SiluMulParams& params, cudaStream_t stream);

}  // namespace spqr
