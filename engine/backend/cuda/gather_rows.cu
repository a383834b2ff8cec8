#include <algorithm>

#include "engine/backend/cuda/cuda_status.h"
#include "engine/backend/cuda/gather_rows.cuh"
#include "engine/backend/cuda/gather_rows_kernel.cuh"
#include "engine/backend/cuda/kernel_launch_checks.h"
#include "engine/util/status_macros.h"

namespace spqr {

absl::Status LaunchGatherRows(const GatherRowsParams& p, cudaStream_t stream) {
  constexpr char kOp[] = "LaunchGatherRows";
  RETURN_IF_ERROR(CheckInRange(p.out_rows, 0, kMaxKernelRows, kOp, "out_rows"));
  RETURN_IF_ERROR(CheckInRange(p.cols, 1, kMaxKernelRows, kOp, "cols"));
  if (p.out_rows == 0) return absl::OkStatus();
  RETURN_IF_ERROR(CheckInRange(p.in_rows, 1, kMaxKernelRows, kOp, "in_rows"));
  RETURN_IF_ERROR(CheckNotNull(p.input, kOp, "input"));
  RETURN_IF_ERROR(CheckNotNull(p.rows, kOp, "rows"));
  RETURN_IF_ERROR(CheckNotNull(p.output, kOp, "output"));
  // gridDim.y is limited to 65535 rows per launch; larger gathers are split.
  constexpr int64_t kMaxRowsPerLaunch = 65535;
  const unsigned col_blocks = static_cast<unsigned>((p.cols + kernels::kGatherRowsThreads - 1) /
                                                    kernels::kGatherRowsThreads);
  for (int64_t row0 = 0; row0 < p.out_rows; row0 += kMaxRowsPerLaunch) {
    GatherRowsParams chunk = p;
    chunk.out_rows = std::min(kMaxRowsPerLaunch, p.out_rows - row0);
    chunk.rows += row0;
    chunk.output += row0 * p.cols;
    const dim3 grid(col_blocks, static_cast<unsigned>(chunk.out_rows));
    SPQR_LAUNCH(kernels::GatherRowsKernel, grid, kernels::kGatherRowsThreads, 0, stream, chunk);
    CUDA_RETURN_IF_ERROR(cudaGetLastError());
  }
  return absl::OkStatus();
}

}  // namespace spqr
