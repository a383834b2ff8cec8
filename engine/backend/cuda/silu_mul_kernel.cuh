// Kernel body of LaunchSiluMul (silu_mul.cuh), compiled by nvcc for the device and by g++ for the
// CPU harness (launch.cuh).
#pragma once

#include <cstdint>

#include "engine/backend/cuda/launch.cuh"
#include "engine/backend/cuda/silu_mul.cuh"

namespace spqr::kernels {

inline constexpr int kSiluMulThreads = 256;

// Grid: x over column tiles, y over rows (so no division per element). expf, not __expf: the fast
// form's error grows with |g| and this must match the CPU twin closely.
__global__ void __launch_bounds__(kSiluMulThreads) SiluMulKernel(SiluMulParams p) {
  const int64_t row = blockIdx.y;
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kSiluMulThreads + threadIdx.x;
  if (col >= p.cols) return;
  const float g = p.gate[row * p.gate_row_stride + col];
  const float u = p.up[row * p.up_row_stride + col];
  p.output[row * p.output_row_stride + col] = g / (1.0f + expf(-g)) * u;
}

}  // namespace spqr::kernels
