#include "absl/strings/str_cat.h"
#include "engine/backend/cuda/cuda_status.h"
#include "engine/backend/cuda/kernel_launch_checks.h"
#include "engine/backend/cuda/spqr_dequantize.cuh"
#include "engine/backend/cuda/spqr_dequantize_kernel.cuh"
#include "engine/util/status_macros.h"

namespace spqr {

absl::Status LaunchSpqrDequantize(const SpqrDequantizeParams& p, cudaStream_t stream) {
  constexpr char kOp[] = "LaunchSpqrDequantize";
  const SpqrLayerDeviceView& l = p.layer;
  RETURN_IF_ERROR(CheckSpqrLayerView(l, kOp));
  RETURN_IF_ERROR(CheckNotNull(p.output, kOp, "output"));
  const unsigned blocks = static_cast<unsigned>(l.out_features);
  const bool f16 = l.fp16_arithmetic != 0;  // the layer's decode arithmetic: one instance each
  switch (p.output_dtype) {
    case DType::kF32: {
      auto* kernel = f16 ? &kernels::SpqrDequantizeKernel<float, true>
                         : &kernels::SpqrDequantizeKernel<float, false>;
      SPQR_LAUNCH(kernel, blocks, kernels::kSpqrDequantizeThreads, 0, stream, l,
                  static_cast<float*>(p.output));
      break;
    }
    case DType::kF16: {
      auto* kernel = f16 ? &kernels::SpqrDequantizeKernel<__half, true>
                         : &kernels::SpqrDequantizeKernel<__half, false>;
      SPQR_LAUNCH(kernel, blocks, kernels::kSpqrDequantizeThreads, 0, stream, l,
                  static_cast<__half*>(p.output));
      break;
    }
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("LaunchSpqrDequantize: output_dtype must be F32 or F16, not ",
                       std::string(DTypeName(p.output_dtype))));
  }
  CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

}  // namespace spqr
