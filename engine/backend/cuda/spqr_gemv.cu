#include <algorithm>

#include "engine/backend/cuda/cuda_status.h"
#include "engine/backend/cuda/kernel_launch_checks.h"
#include "engine/backend/cuda/spqr_decode.cuh"
#include "engine/backend/cuda/spqr_gemv.cuh"
#include "engine/util/status_macros.h"

namespace spqr {
namespace {

constexpr int kWarpsPerBlock = 4;
constexpr int kMaxBatchPerPass = 8;

// x_perm[b][j] = x[b][perm[j]]: one read of x per call instead of one per output row.
__global__ void GatherPermutedKernel(const uint32_t* __restrict__ perm, const float* __restrict__ x,
                                     float* __restrict__ x_perm, int64_t n, int64_t count) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += stride) {
    const int64_t b = i / n;
    const int64_t j = i - b * n;
    x_perm[i] = x[b * n + __ldg(perm + j)];
  }
}

// One warp per output row r, B rows of x per pass. Lane l handles permuted columns l, l+32, ...;
// the group statistics are decoded again only when the group changes.
template <int B>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    SpqrGemvKernel(SpqrLayerDeviceView l, const float* __restrict__ x_perm, float* y,
                   int64_t y_stride) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  if (r >= l.out_features) return;
  const int lane = threadIdx.x % 32;
  const int64_t n = l.in_features;
  const uint32_t* codes = l.weight_codes + r * l.weight_row_words;
  float acc[B];
#pragma unroll
  for (int b = 0; b < B; ++b) acc[b] = 0.0f;

  int64_t cached_group = -1;
  DeviceGroupStats s{0.0f, 0.0f};
  for (int64_t j = lane; j < n; j += 32) {
    const int64_t g = j / l.beta1;
    if (g != cached_group) {
      s = DecodeGroupStatsDevice(l, r, g);
      cached_group = g;
    }
    const float w = DequantDevice(GetCodeDevice(codes, j, l.wbits), s.scale, s.zero);
#pragma unroll
    for (int b = 0; b < B; ++b) acc[b] += w * x_perm[b * n + j];
  }
  // Outliers: W_hat = dense + residuals, so their contribution is a separate sparse dot.
  const int64_t last = __ldg(l.outlier_row_offsets + r + 1);
  for (int64_t k = __ldg(l.outlier_row_offsets + r) + lane; k < last; k += 32) {
    const int64_t j = OutlierColumnDevice(l, k);
    const float v = F16BitsToFloat(__ldg(l.outlier_values + k));
#pragma unroll
    for (int b = 0; b < B; ++b) acc[b] += v * x_perm[b * n + j];
  }
#pragma unroll
  for (int b = 0; b < B; ++b) {
    for (int offset = 16; offset > 0; offset >>= 1) {
      acc[b] += __shfl_xor_sync(0xffffffffu, acc[b], offset);
    }
  }
  if (lane == 0) {
#pragma unroll
    for (int b = 0; b < B; ++b) y[b * y_stride + r] = acc[b];
  }
}

template <int B>
void LaunchPass(const SpqrLayerDeviceView& l, const float* x_perm, float* y, int64_t y_stride,
                cudaStream_t stream) {
  const unsigned blocks =
      static_cast<unsigned>((l.out_features + kWarpsPerBlock - 1) / kWarpsPerBlock);
  SpqrGemvKernel<B><<<blocks, kWarpsPerBlock * 32, 0, stream>>>(l, x_perm, y, y_stride);
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
  GatherPermutedKernel<<<gather_blocks, kGatherThreads, 0, stream>>>(p.layer.perm, p.x, p.x_perm, n,
                                                                     count);
  CUDA_RETURN_IF_ERROR(cudaGetLastError());
  for (int64_t b0 = 0; b0 < p.batch; b0 += kMaxBatchPerPass) {
    const int64_t rows = std::min<int64_t>(kMaxBatchPerPass, p.batch - b0);
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
