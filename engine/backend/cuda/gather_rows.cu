#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "absl/strings/str_cat.h"
#include "engine/backend/cuda/cuda_status.h"
#include "engine/backend/cuda/gather_rows.cuh"
#include "engine/backend/cuda/gather_rows_kernel.cuh"
#include "engine/backend/cuda/kernel_launch_checks.h"
#include "engine/util/status_macros.h"

namespace spqr {
namespace {

template <typename T>
void Launch(const GatherRowsParams& p, cudaStream_t stream) {
  SPQR_LAUNCH(kernels::GatherRowsKernel<T>, static_cast<unsigned>(p.rows),
              kernels::kGatherRowsThreads, 0, stream, static_cast<const T*>(p.table), p.table_rows,
              p.indices, p.output, p.cols);
}

}  // namespace

absl::Status LaunchGatherRows(const GatherRowsParams& p, cudaStream_t stream) {
  constexpr char kOp[] = "LaunchGatherRows";
  RETURN_IF_ERROR(CheckInRange(p.rows, 0, kMaxKernelRows, kOp, "rows"));
  RETURN_IF_ERROR(CheckInRange(p.cols, 1, kMaxKernelRows, kOp, "cols"));
  RETURN_IF_ERROR(CheckInRange(p.table_rows, 1, int64_t{1} << 40, kOp, "table_rows"));
  if (p.rows == 0) return absl::OkStatus();
  RETURN_IF_ERROR(CheckNotNull(p.table, kOp, "table"));
  RETURN_IF_ERROR(CheckNotNull(p.indices, kOp, "indices"));
  RETURN_IF_ERROR(CheckNotNull(p.output, kOp, "output"));
  switch (p.table_dtype) {
    case DType::kF16:
      Launch<__half>(p, stream);
      break;
    case DType::kBF16:
      Launch<__nv_bfloat16>(p, stream);
      break;
    case DType::kF32:
      Launch<float>(p, stream);
      break;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("LaunchGatherRows: table_dtype must be F16, BF16 or F32, not ",
                       std::string(DTypeName(p.table_dtype))));
  }
  CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

}  // namespace spqr
