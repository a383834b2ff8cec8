// Elementwise additions of the CUDA forward, in fp32: the residual add (x += y) and the bias of a
// projection (y[r, :] += float(bias)), with the bias stored as fp16, bf16 or fp32. One rounding
// per element, as in the CPU backend (cpu::Linear adds the converted bias to each output).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "absl/status/status.h"
#include "engine/model/tensor.h"

namespace spqr {

struct AddInPlaceParams {
  float* x = nullptr;        // [count]; x[i] += y[i]
  const float* y = nullptr;  // [count]; may not overlap x unless equal to it
  int64_t count = 0;
};

// Validates (INVALID_ARGUMENT naming the field) and enqueues x += y on `stream`. count == 0 is a
// no-op.
absl::Status LaunchAddInPlace(const AddInPlaceParams& params, cudaStream_t stream);

struct AddBiasParams {
  float* y = nullptr;          // [rows, cols], row-major
  const void* bias = nullptr;  // [cols] of bias_dtype
  DType bias_dtype = DType::kF32;
  int64_t rows = 0;
  int64_t cols = 0;
};

// Validates (INVALID_ARGUMENT naming the field) and enqueues y[r, c] += float(bias[c]) on
// `stream`. rows == 0 is a no-op.
absl::Status LaunchAddBias(const AddBiasParams& params, cudaStream_t stream);

}  // namespace spqr
