#include <algorithm>

#include "engine/backend/cuda/add_rows.cuh"
#include "engine/backend/cuda/add_rows_kernel.cuh"
#include "engine/backend/cuda/cuda_status.h"
#include "engine/backend/cuda/kernel_launch_checks.h"
#include "engine/util/status_macros.h"

namespace spqr {

absl::Status LaunchAddRows(const AddRowsParams& p, cudaStream_t stream) {
  constexpr char kOp[] = "LaunchAddRows";
  RETURN_IF_ERROR(CheckInRange(p.rows, 0, kMaxKernelRows, kOp, "rows"));
  RETURN_IF_ERROR(CheckInRange(p.cols, 1, kMaxKernelRows, kOp, "cols"));
  if (p.rows == 0) return absl::OkStatus();
  RETURN_IF_ERROR(CheckNotNull(p.x, kOp, "x"));
  RETURN_IF_ERROR(CheckNotNull(p.y, kOp, "y"));
  RETURN_IF_ERROR(CheckInRange(p.x_row_stride, p.cols, int64_t{1} << 40, kOp, "x_row_stride"));
  if (p.y_row_stride != 0) {
    RETURN_IF_ERROR(CheckInRange(p.y_row_stride, p.cols, int64_t{1} << 40, kOp, "y_row_stride"));
  }
  // gridDim.y is limited to 65535 rows per launch; larger batches are split.
  constexpr int64_t kMaxRowsPerLaunch = 65535;
  const unsigned col_blocks =
      static_cast<unsigned>((p.cols + kernels::kAddRowsThreads - 1) / kernels::kAddRowsThreads);
  for (int64_t row0 = 0; row0 < p.rows; row0 += kMaxRowsPerLaunch) {
    AddRowsParams chunk = p;
    chunk.rows = std::min(kMaxRowsPerLaunch, p.rows - row0);
    chunk.x += row0 * p.x_row_stride;
    chunk.y += row0 * p.y_row_stride;
    const dim3 grid(col_blocks, static_cast<unsigned>(chunk.rows));
    SPQR_LAUNCH(kernels::AddRowsKernel, grid, kernels::kAddRowsThreads, 0, stream, chunk);
    CUDA_RETURN_IF_ERROR(cudaGetLastError());
  }
  return absl::OkStatus();
}

}  // namespace spqr
