#include "absl/strings/str_cat.h"
#include "engine/backend/cuda/cuda_status.h"
#include "engine/backend/cuda/kernel_launch_checks.h"
#include "engine/backend/cuda/spqr_decode.cuh"
#include "engine/backend/cuda/spqr_dequantize.cuh"
#include "engine/util/status_macros.h"

namespace spqr {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ void StoreValue(float* out, int64_t i, float v) { out[i] = v; }
__device__ __forceinline__ void StoreValue(__half* out, int64_t i, float v) {
  out[i] = __float2half_rn(v);
}

// One block per output row. Outliers are added to the dense value before the single store (a
// thread finds the outlier of its column by binary search in the row's sorted column ids), so the
// result is w + f(v) exactly as the host decoder computes it, with no second pass over memory.
template <typename OutT>
__global__ void __launch_bounds__(kThreads) SpqrDequantizeKernel(SpqrLayerDeviceView l, OutT* out) {
  const int64_t r = blockIdx.x;
  const int64_t n = l.in_features;
  const uint32_t* codes = l.weight_codes + r * l.weight_row_words;
  const int64_t first = __ldg(l.outlier_row_offsets + r);
  const int64_t last = __ldg(l.outlier_row_offsets + r + 1);
  for (int64_t j = threadIdx.x; j < n; j += kThreads) {
    const DeviceGroupStats s = DecodeGroupStatsDevice(l, r, j / l.beta1);
    float w = DequantDevice(GetCodeDevice(codes, j, l.wbits), s.scale, s.zero);
    int64_t lo = first;
    int64_t hi = last;
    while (lo < hi) {  // first outlier with column >= j
      const int64_t mid = (lo + hi) / 2;
      if (OutlierColumnDevice(l, mid) < j) {
        lo = mid + 1;
      } else {
        hi = mid;
      }
    }
    if (lo < last && OutlierColumnDevice(l, lo) == j) {
      w = __fadd_rn(w, F16BitsToFloat(__ldg(l.outlier_values + lo)));
    }
    StoreValue(out, r * n + __ldg(l.perm + j), w);
  }
}

}  // namespace

absl::Status LaunchSpqrDequantize(const SpqrDequantizeParams& p, cudaStream_t stream) {
  constexpr char kOp[] = "LaunchSpqrDequantize";
  const SpqrLayerDeviceView& l = p.layer;
  RETURN_IF_ERROR(CheckSpqrLayerView(l, kOp));
  RETURN_IF_ERROR(CheckNotNull(p.output, kOp, "output"));
  const unsigned blocks = static_cast<unsigned>(l.out_features);
  switch (p.output_dtype) {
    case DType::kF32:
      SpqrDequantizeKernel<<<blocks, kThreads, 0, stream>>>(l, static_cast<float*>(p.output));
      break;
    case DType::kF16:
      SpqrDequantizeKernel<<<blocks, kThreads, 0, stream>>>(l, static_cast<__half*>(p.output));
      break;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("LaunchSpqrDequantize: output_dtype must be F32 or F16, not ",
                       std::string(DTypeName(p.output_dtype))));
  }
  CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

}  // namespace spqr
