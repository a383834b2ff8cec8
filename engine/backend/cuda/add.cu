#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "engine/backend/cuda/add.cuh"
#include "engine/backend/cuda/add_kernel.cuh"
#include "engine/backend/cuda/cuda_status.h"
#include "engine/backend/cuda/kernel_launch_checks.h"
#include "engine/util/status_macros.h"

namespace spqr {
namespace {

constexpr int kThreads = kernels::kAddThreads;
constexpr int64_t kMaxBlocks = 65536;  // grid-stride beyond this
constexpr int64_t kMaxGridY = 65535;

template <typename T>
void LaunchBias(const AddBiasParams& p, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>((p.cols + kThreads - 1) / kThreads),
                  static_cast<unsigned>(p.rows));
  SPQR_LAUNCH(kernels::AddBiasKernel<T>, grid, kThreads, 0, stream, p.y,
              static_cast<const T*>(p.bias), p.cols);
}

}  // namespace

absl::Status LaunchAddInPlace(const AddInPlaceParams& p, cudaStream_t stream) {
  constexpr char kOp[] = "LaunchAddInPlace";
  RETURN_IF_ERROR(CheckInRange(p.count, 0, int64_t{1} << 40, kOp, "count"));
  if (p.count == 0) return absl::OkStatus();
  RETURN_IF_ERROR(CheckNotNull(p.x, kOp, "x"));
  RETURN_IF_ERROR(CheckNotNull(p.y, kOp, "y"));
  const unsigned blocks =
      static_cast<unsigned>(std::min(kMaxBlocks, (p.count + kThreads - 1) / kThreads));
  SPQR_LAUNCH(kernels::AddInPlaceKernel, blocks, kThreads, 0, stream, p.x, p.y, p.count);
  CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

absl::Status LaunchAddBias(const AddBiasParams& p, cudaStream_t stream) {
  constexpr char kOp[] = "LaunchAddBias";
  RETURN_IF_ERROR(CheckInRange(p.rows, 0, kMaxGridY, kOp, "rows"));
  RETURN_IF_ERROR(CheckInRange(p.cols, 1, kMaxKernelRows, kOp, "cols"));
  if (p.rows == 0) return absl::OkStatus();
  RETURN_IF_ERROR(CheckNotNull(p.y, kOp, "y"));
  RETURN_IF_ERROR(CheckNotNull(p.bias, kOp, "bias"));
  switch (p.bias_dtype) {
    case DType::kF16:
      LaunchBias<__half>(p, stream);
      break;
    case DType::kBF16:
      LaunchBias<__nv_bfloat16>(p, stream);
      break;
    case DType::kF32:
      LaunchBias<float>(p, stream);
      break;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("LaunchAddBias: bias_dtype must be F16, BF16 or F32, not ",
                       std::string(DTypeName(p.bias_dtype))));
  }
  CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

}  // namespace spqr
