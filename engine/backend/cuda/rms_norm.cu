#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "absl/strings/str_cat.h"
#include "engine/backend/cuda/cuda_status.h"
#include "engine/backend/cuda/kernel_launch_checks.h"
#include "engine/backend/cuda/rms_norm.cuh"
#include "engine/util/status_macros.h"

namespace spqr {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ float LoadWeight(const __half* w, int64_t i) {
  return __half2float(w[i]);
}
__device__ __forceinline__ float LoadWeight(const __nv_bfloat16* w, int64_t i) {
  return __bfloat162float(w[i]);
}
__device__ __forceinline__ float LoadWeight(const float* w, int64_t i) { return w[i]; }

// One block per row: each thread sums the squares of a strided slice, the block reduces through
// warp shuffles and one shared-memory hop, then every thread scales its slice.
template <typename WeightT>
__global__ void __launch_bounds__(kThreads)
    RmsNormKernel(const float* input, const WeightT* __restrict__ weight, float* output,
                  int64_t dim, int64_t in_stride, int64_t out_stride, float eps) {
  const float* x = input + blockIdx.x * in_stride;
  float* y = output + blockIdx.x * out_stride;
  float sum = 0.0f;
  for (int64_t i = threadIdx.x; i < dim; i += kThreads) sum += x[i] * x[i];
  for (int offset = 16; offset > 0; offset >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
  __shared__ float warp_sums[kThreads / 32];
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (lane == 0) warp_sums[warp] = sum;
  __syncthreads();
  float total = 0.0f;
  for (int w = 0; w < kThreads / 32; ++w) total += warp_sums[w];
  const float scale = rsqrtf(total / static_cast<float>(dim) + eps);
  // Reading x again (rather than caching it in registers) keeps any dim supported; the row is
  // still in L1/L2 from the first pass.
  for (int64_t i = threadIdx.x; i < dim; i += kThreads)
    y[i] = LoadWeight(weight, i) * (x[i] * scale);
}

template <typename WeightT>
void Launch(const RmsNormParams& p, cudaStream_t stream) {
  RmsNormKernel<WeightT><<<static_cast<unsigned>(p.rows), kThreads, 0, stream>>>(
      p.input, static_cast<const WeightT*>(p.weight), p.output, p.dim, p.input_row_stride,
      p.output_row_stride, p.eps);
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
