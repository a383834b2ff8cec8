// Kernel body of LaunchGatherRows (gather_rows.cuh), compiled by nvcc for the device and by g++
// for the CPU harness (launch.cuh).
#pragma once

#include <cstdint>

#include "engine/backend/cuda/gather_rows.cuh"
#include "engine/backend/cuda/launch.cuh"

namespace spqr::kernels {

inline constexpr int kGatherRowsThreads = 256;

// Grid: x over column tiles, y over output rows.
__global__ void __launch_bounds__(kGatherRowsThreads) GatherRowsKernel(GatherRowsParams p) {
  const int64_t row = blockIdx.y;
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kGatherRowsThreads + threadIdx.x;
  if (col >= p.cols) return;
  p.output[row * p.cols + col] = p.input[static_cast<int64_t>(p.rows[row]) * p.cols + col];
}

}  // namespace spqr::kernels
