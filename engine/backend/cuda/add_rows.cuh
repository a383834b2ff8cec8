// x[r, :] += y[r, :] over fp32 rows: the residual add of the LLaMA block (y_row_stride = cols)
// and the bias add after a projection (y_row_stride = 0: every row adds the same [cols] vector).
// One fp32 addition per element, so the result equals the CPU backend's loop bit for bit.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "absl/status/status.h"

namespace spqr {

struct AddRowsParams {
  float* x = nullptr;        // [rows, cols], row i at x + i * x_row_stride; updated in place
  const float* y = nullptr;  // row i at y + i * y_row_stride
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t x_row_stride = 0;  // in elements, >= cols
  int64_t y_row_stride = 0;  // in elements: 0 (broadcast one row) or >= cols
};

// Validates (INVALID_ARGUMENT naming the field) and enqueues the addition on `stream`.
// rows == 0 is a no-op.
absl::Status LaunchAddRows(const AddRowsParams& params, cudaStream_t stream);

}  // namespace spqr
