// RMSNorm as LLaMA defines it: y = w * (x / sqrt(mean(x^2) + eps)), computed in fp32 over each row
// of an fp32 activation matrix, with the weight stored as fp16, bf16 or fp32.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "absl/status/status.h"
#include "engine/model/tensor.h"

namespace spqr {

struct RmsNormParams {
  const float* input = nullptr;  // [rows, dim], row i at input + i * input_row_stride
  const void* weight = nullptr;  // [dim] of weight_dtype
  DType weight_dtype = DType::kF16;
  float* output = nullptr;  // [rows, dim]; may equal input (in place)
  int64_t rows = 0;
  int64_t dim = 0;
  int64_t input_row_stride = 0;   // in elements, >= dim
  int64_t output_row_stride = 0;  // in elements, >= dim
  float eps = 1e-6f;
};

// Validates the shapes and pointers (INVALID_ARGUMENT naming the field) and enqueues the kernel on
// `stream`. rows == 0 is a no-op. Returns the launch error, if any, as a Status.
absl::Status LaunchRmsNorm(const RmsNormParams& params, cudaStream_t stream);

}  // namespace spqr
