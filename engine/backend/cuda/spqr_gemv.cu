#include <algorithm>

#include "engine/backend/cuda/cuda_status.h"
#include "engine/backend/cuda/kernel_launch_checks.h"
#include "engine/backend/cuda/spqr_gemv.cuh"
#include "engine/backend/cuda/spqr_gemv_kernel.cuh"
#include "engine/util/status_macros.h"

namespace spqr {
namespace {

using kernels::kSpqrGemvMaxBatchPerPass;
using kernels::kSpqrGemvWarpsPerBlock;

template <int B>
void LaunchPass(const SpqrLayerDeviceView& l, const float* x_perm, float* y, int64_t y_stride,
                cudaStream_t stream) {
  const unsigned blocks =
      static_cast<unsigned>((l.out_features + kSpqrGemvWarpsPerBlock - 1) / kSpqrGemvWarpsPerBlock);
  // The layer's decode arithmetic picks the kernel instance (no per-weight branch).
  auto* kernel = l.fp16_arithmetic != 0 ? &kernels::SpqrGemvKernel<B, true>
                                        : &kernels::SpqrGemvKernel<B, false>;
  SPQR_LAUNCH(kernel, blocks, kSpqrGemvWarpsPerBlock * 32, 0, stream, l, x_perm, y, y_stride);
}

}  // namespace

absl::Status LaunchSpqrGemv(const SpqrGemvParams& p, cudaStream_t stream) {
  constexpr char kOp[] = "LaunchSpqrGemv";
  RETURN_IF_ERROR(CheckSpqrLayerView(p.layer, kOp));
  RETURN_IF_ERROR(CheckInRange(p.batch, 0, kMaxKernelRows, kOp, "batch"));
  if (p.batch == 0) return absl::OkStatus();
  RETURN_IF_ERROR(CheckNotNull(p.x, kOp, "x"));
  RETURN_IF_ERROR(CheckNotNull(p.x_perm, kOp, "x_perm"));
  RETURN_IF_ERROR(CheckNotNull(p.y, kOp, "y"));
  RETURN_IF_ERROR(
      CheckInRange(p.y_stride, p.layer.out_features, int64_t{1} << 40, kOp, "y_stride"));
  const int64_t n = p.layer.in_features;
  const int64_t count = p.batch * n;
  constexpr int kGatherThreads = 256;
  const unsigned gather_blocks = static_cast<unsigned>(
      std::min<int64_t>(65536, (count + kGatherThreads - 1) / kGatherThreads));
  SPQR_LAUNCH(kernels::GatherPermutedKernel, gather_blocks, kGatherThreads, 0, stream, p.layer.perm,
              p.x, p.x_perm, n, count);
  CUDA_RETURN_IF_ERROR(cudaGetLastError());
  for (int64_t b0 = 0; b0 < p.batch; b0 += kSpqrGemvMaxBatchPerPass) {
    const int64_t rows = std::min<int64_t>(kSpqrGemvMaxBatchPerPass, p.batch - b0);
    const float* x_perm = p.x_perm + b0 * n;
    float* y = p.y + b0 * p.y_stride;
    switch (rows) {
      case 1:
        LaunchPass<1>(p.layer, x_perm, y, p.y_stride, stream);
        break;
      case 2:
        LaunchPass<2>(p.layer, x_perm, y, p.y_stride, stream);
        break;
      case 3:
        LaunchPass<3>(p.layer, x_perm, y, p.y_stride, stream);
        break;
      case 4:
        LaunchPass<4>(p.layer, x_perm, y, p.y_stride, stream);
        break;
      case 5:
        LaunchPass<5>(p.layer, x_perm, y, p.y_stride, stream);
        break;
      case 6:
        LaunchPass<6>(p.layer, x_perm, y, p.y_stride, stream);
        break;
      case 7:
        LaunchPass<7>(p.layer, x_perm, y, p.y_stride, stream);
        break;
      default:
        LaunchPass<8>(p.layer, x_perm, y, p.y_stride, stream);
        break;
    }
    CUDA_RETURN_IF_ERROR(cudaGetLastError());
  }
  return absl::OkStatus();
}

}  // namespace spqr
