// Kernel body of LaunchAddRows (add_rows.cuh), compiled by nvcc for the device and by g++ for the
// CPU harness (launch.cuh).
#pragma once

#include <cstdint>

#include "engine/backend/cuda/add_rows.cuh"
#include "engine/backend/cuda/launch.cuh"

namespace spqr::kernels {

inline constexpr int kAddRowsThreads = 256;

// Grid: x over column tiles, y over rows.
__global__ void __launch_bounds__(kAddRowsThreads) AddRowsKernel(AddRowsParams p) {
  const int64_t row = blockIdx.y;
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kAddRowsThreads + threadIdx.x;
  if (col >= p.cols) return;
  p.x[row * p.x_row_stride + col] += p.y[row * p.y_row_stride + col];
}

}  // namespace spqr::kernels
