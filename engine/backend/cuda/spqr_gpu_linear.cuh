// y = x · W_hat^T on a SpQR layer in the GPU layout (spqr_gpu_layout.h): the one entry point the
// CUDA backend calls for an SpQR linear layer, for any batch.
//
// Paths, and the rule that picks one (ChooseSpqrGpuPath):
//   kDecode       batch <= 16 (kSpqrGpuDecodeMaxBatch), wbits in {2, 3, 4} and beta1 % 8 == 0
//                 (every configuration the quantizer's presets write). A gather kernel writes the
//                 permuted inputs once (column-major, batch padded to 1/2/4/8/16), then one kernel
//                 reads every weight once for all sequences, decodes it with bit tricks (shift +
//                 lop3 + one FMA), accumulates in fp32 and adds the outliers.
//   kDequantGemm  everything else (prefill, batch > 16, and the rare configurations above): the
//                 layer is dequantized to fp16 in permuted column order (one coalesced pass,
//                 outliers included), the inputs are gathered and cast to fp16 in permuted order,
//                 and cuBLAS multiplies them on tensor cores with fp32 accumulation.
// The batch bound 16 is the issue's design point (the decode kernel keeps B x R fp32 sums per
// lane); where exactly the GEMM path starts winning is for the GPU benchmark to measure
// (bench/gpu/, docs/gpu-performance.md).
//
// Numerics:
//   kDecode: each weight within e_j = 3 2^-24 |scale| (2^wbits + |zero|) of the exact decode (its
//     group's statistics), fp32 sums in another order than the CPU product:
//     |y - y_ref| <= sum_j e_j |x_j| + 2 (n + 64) 2^-24 sum_j (|w_j x_j| + 2 |residual_j x_j|).
//   kDequantGemm: weights and inputs rounded to fp16 (relative 2^-11 each), fp32 accumulation:
//     |y - y_ref| <= (2^-10 + 2^-22 + 2 (n + 64) 2^-24) sum_j |w_j x_j| (+ the fp16 underflow of
//     tiny values: 2^-24 sum_j (|w_j| + |x_j|) in absolute terms).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "engine/backend/cuda/cublas_gemm.h"
#include "engine/backend/cuda/spqr_gpu_layout.h"
#include "engine/model/tensor.h"

namespace spqr {

inline constexpr int64_t kSpqrGpuDecodeMaxBatch = 16;

enum class SpqrGpuPath { kAuto, kDecode, kDequantGemm };

// True when the decode kernel handles the layer's configuration (wbits 2..4, beta1 % 8 == 0).
bool SpqrGpuDecodeSupports(const SpqrGpuLayerView& layer);
// The rule above (never returns kAuto).
SpqrGpuPath ChooseSpqrGpuPath(const SpqrGpuLayerView& layer, int64_t batch);
// Device scratch bytes one call needs with `path` (kAuto: the chosen one).
int64_t SpqrGpuLinearWorkspaceBytes(const SpqrGpuLayerView& layer, int64_t batch,
                                    SpqrGpuPath path = SpqrGpuPath::kAuto);

struct SpqrGpuLinearParams {
  SpqrGpuLayerView layer;
  const float* x = nullptr;  // [batch][n] fp32, row-major, ORIGINAL column order
  float* y = nullptr;        // [batch][m] fp32, row-major; overwritten
  int64_t batch = 0;
  void* workspace = nullptr;  // device scratch of at least SpqrGpuLinearWorkspaceBytes bytes
  int64_t workspace_bytes = 0;
  // Needed by kDequantGemm only; its handle must be bound to the same `stream`.
  const CublasHandle* cublas = nullptr;
  SpqrGpuPath path = SpqrGpuPath::kAuto;  // tests and benchmarks force a path
};

// Validates (INVALID_ARGUMENT naming "LaunchSpqrGpuLinear" and the field: layer view, pointers,
// workspace size, a path the layer does not support) and enqueues the product on `stream`.
// batch == 0 is a no-op.
absl::Status LaunchSpqrGpuLinear(const SpqrGpuLinearParams& params, cudaStream_t stream);

// Dense W_hat [m][n] in PERMUTED column order (out[r][j] = w(r, j)), fp32 (bit-identical to the
// format's decoder) or fp16 (its round-to-nearest-even). `output` holds m * n elements.
absl::Status LaunchSpqrGpuDequantize(const SpqrGpuLayerView& layer, void* output, DType dtype,
                                     cudaStream_t stream);

}  // namespace spqr
