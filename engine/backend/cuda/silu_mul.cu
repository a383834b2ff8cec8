#include <algorithm>

#include "engine/backend/cuda/cuda_status.h"
#include "engine/backend/cuda/kernel_launch_checks.h"
#include "engine/backend/cuda/silu_mul.cuh"
#include "engine/backend/cuda/silu_mul_kernel.cuh"
#include "engine/util/status_macros.h"

namespace spqr {

absl::Status LaunchSiluMul(const SiluMulParams& p, cudaStream_t stream) {
  constexpr char kOp[] = "LaunchSiluMul";
  // gridDim.y is limited to 65535 rows per launch; larger batches are split below.
  RETURN_IF_ERROR(CheckInRange(p.rows, 0, kMaxKernelRows, kOp, "rows"));
  RETURN_IF_ERROR(CheckInRange(p.cols, 1, kMaxKernelRows, kOp, "cols"));
  if (p.rows == 0) return absl::OkStatus();
  RETURN_IF_ERROR(CheckNotNull(p.gate, kOp, "gate"));
  RETURN_IF_ERROR(CheckNotNull(p.up, kOp, "up"));
  RETURN_IF_ERROR(CheckNotNull(p.output, kOp, "output"));
  RETURN_IF_ERROR(
      CheckInRange(p.gate_row_stride, p.cols, int64_t{1} << 40, kOp, "gate_row_stride"));
  RETURN_IF_ERROR(CheckInRange(p.up_row_stride, p.cols, int64_t{1} << 40, kOp, "up_row_stride"));
  RETURN_IF_ERROR(
      CheckInRange(p.output_row_stride, p.cols, int64_t{1} << 40, kOp, "output_row_stride"));
  constexpr int64_t kMaxRowsPerLaunch = 65535;
  const unsigned col_blocks =
      static_cast<unsigned>((p.cols + kernels::kSiluMulThreads - 1) / kernels::kSiluMulThreads);
  for (int64_t row0 = 0; row0 < p.rows; row0 += kMaxRowsPerLaunch) {
    SiluMulParams chunk = p;
    chunk.rows = std::min(kMaxRowsPerLaunch, p.rows - row0);
    chunk.gate += row0 * p.gate_row_stride;
    chunk.up += row0 * p.up_row_stride;
    chunk.output += row0 * p.output_row_stride;
    const dim3 grid(col_blocks, static_cast<unsigned>(chunk.rows));
    SPQR_LAUNCH(kernels::SiluMulKernel, grid, kernels::kSiluMulThreads, 0, stream, chunk);
    CUDA_RETURN_IF_ERROR(cudaGetLastError());
  }
  return absl::OkStatus();
}

}  // namespace spqr
