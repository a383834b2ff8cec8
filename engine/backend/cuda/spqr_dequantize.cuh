// Decodes a whole packed SpQR layer into a dense row-major matrix W_hat [m][n] in ORIGINAL column
// order, bit-identical to DequantizeSpqrLayer() (fp32 output) or to its fp16 rounding (fp16
// output, round to nearest even). Used by the prefill path that dequantizes into a workspace and
// calls cuBLAS, and by tests that check the device decoder bit for bit.
#pragma once

#include <cuda_runtime.h>

#include "absl/status/status.h"
#include "engine/backend/cuda/spqr_device_layer.h"
#include "engine/model/tensor.h"

namespace spqr {

struct SpqrDequantizeParams {
  SpqrLayerDeviceView layer;
  void* output = nullptr;            // [m][n] of output_dtype, row-major, original column order
  DType output_dtype = DType::kF32;  // kF32 or kF16
};

// Validates (INVALID_ARGUMENT naming the field) and enqueues the decode on `stream`.
absl::Status LaunchSpqrDequantize(const SpqrDequantizeParams& params, cudaStream_t stream);

}  // namespace spqr
