#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "engine/backend/cuda/cast_f32.cuh"
#include "engine/backend/cuda/cast_f32_kernel.cuh"
#include "engine/backend/cuda/cuda_status.h"
#include "engine/backend/cuda/kernel_launch_checks.h"
#include "engine/util/status_macros.h"

namespace spqr {
namespace {

constexpr int kThreads = kernels::kCastF32Threads;
constexpr int64_t kMaxBlocks = 65536;  // grid-stride beyond this: enough to fill any current GPU

}  // namespace

absl::Status LaunchCastF32(const CastF32Params& p, cudaStream_t stream) {
  constexpr char kOp[] = "LaunchCastF32";
  RETURN_IF_ERROR(CheckInRange(p.count, 0, int64_t{1} << 40, kOp, "count"));
  if (p.count == 0) return absl::OkStatus();
  RETURN_IF_ERROR(CheckNotNull(p.input, kOp, "input"));
  RETURN_IF_ERROR(CheckNotNull(p.output, kOp, "output"));
  const unsigned blocks =
      static_cast<unsigned>(std::min(kMaxBlocks, (p.count + kThreads - 1) / kThreads));
  switch (p.output_dtype) {
    case DType::kF16:
      SPQR_LAUNCH(kernels::CastF32Kernel<__half>, blocks, kThreads, 0, stream, p.input,
                  static_cast<__half*>(p.output), p.count);
      break;
    case DType::kBF16:
      SPQR_LAUNCH(kernels::CastF32Kernel<__nv_bfloat16>, blocks, kThreads, 0, stream, p.input,
                  static_cast<__nv_bfloat16*>(p.output), p.count);
      break;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("LaunchCastF32: output_dtype must be F16 or BF16, not ",
                       std::string(DTypeName(p.output_dtype))));
  }
  CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

}  // namespace spqr
