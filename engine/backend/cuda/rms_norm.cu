#include "absl/strings/str_cat.h"
#include "engine/backend/cuda/cuda_status.h"
#include "engine/backend/cuda/kernel_launch_checks.h"
#include "engine/backend/cuda/rms_norm.cuh"
#include "engine/backend/cuda/rms_norm_kernel.cuh"
#include "engine/util/status_macros.h"

namespace spqr {
namespace {

template <typename WeightT>
void Launch(const RmsNormParams& p, cudaStream_t stream) {
  SPQR_LAUNCH(kernels::RmsNormKernel<WeightT>, static_cast<unsigned>(p.rows),
              kernels::kRmsNormThreads, 0, stream, p.input, static_cast<const WeightT*>(p.weight),
              p.output, p.dim, p.input_row_stride, p.output_row_stride, p.eps);
}

}  // namespace

absl::Status LaunchRmsNorm(const RmsNormParams& p, cudaStream_t stream) {
  constexpr char kOp[] = "LaunchRmsNorm";
  RETURN_IF_ERROR(CheckInRange(p.rows, 0, kMaxKernelRows, kOp, "rows"));
  RETURN_IF_ERROR(CheckInRange(p.dim, 1, kMaxKernelRows, kOp, "dim"));
  if (p.rows == 0) return absl::OkStatus();
  RETURN_IF_ERROR(CheckNotNull(p.input, kOp, "input"));
  RETURN_IF_ERROR(CheckNotNull(p.weight, kOp, "weight"));
  RETURN_IF_ERROR(CheckNotNull(p.output, kOp, "output"));
  RETURN_IF_ERROR(CheckInRange(p.input_row_stride, p.dim, kMaxKernelRows, kOp, "input_row_stride"));
  RETURN_IF_ERROR(
      CheckInRange(p.output_row_stride, p.dim, kMaxKernelRows, kOp, "output_row_stride"));
  if (!(p.eps >= 0.0f)) return absl::InvalidArgumentError("LaunchRmsNorm: eps must be >= 0");
  switch (p.weight_dtype) {
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
          absl::StrCat("LaunchRmsNorm: weight_dtype must be F16, BF16 or F32, not ",
                       std::string(DTypeName(p.weight_dtype))));
  }
  CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

}  // namespace spqr
