// y = x · W_hat^T directly on a packed SpQR layer, for decode batches (batch 1..any; rows of x in
// chunks of up to 8 share one pass over the weights). This is the first, straightforward version
// (issue 5 owns the fast one): x is gathered into permuted column order by a separate small kernel,
// then one warp per output row decodes codes and statistics on the fly, adds the row's outliers and
// reduces. Decoded weights equal DecodePermutedRow() bit for bit; only the fp32 summation order
// differs from a dense product.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "absl/status/status.h"
#include "engine/backend/cuda/spqr_device_layer.h"

namespace spqr {

struct SpqrGemvParams {
  SpqrLayerDeviceView layer;
  const float* x = nullptr;  // [batch][n] row-major, original column order
  float* x_perm = nullptr;   // scratch of batch * n floats (device), overwritten
  float* y = nullptr;        // [batch][y_stride], y[b][r] for r < m written
  int64_t batch = 0;
  int64_t y_stride = 0;  // in elements, >= m
};

// Validates (INVALID_ARGUMENT naming the field) and enqueues the gather and the product on
// `stream`. batch == 0 is a no-op. The caller guarantees x_perm holds batch * n floats.
absl::Status LaunchSpqrGemv(const SpqrGemvParams& params, cudaStream_t stream);

}  // namespace spqr
