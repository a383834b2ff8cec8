// y = x · W_hat^T on a SpQR layer in the GPU layout (spqr_gpu_layout.h): the one entry point the
// CUDA backend calls for an SpQR linear layer, for any batch.
//
// Paths, and the rule that picks one (ChooseSpqrGpuPath). The three kernels need wbits in {2, 3, 4}
// and beta1 % 8 == 0 (every configuration the quantizer's presets write); anything else takes
// kDequantGemm's generic dequantizer.
//   kDecode       (batch <= kSpqrGpuDecodeMaxBatch) A gather kernel writes the permuted inputs once
//                 (column-major, batch padded to 1/2/4/8/16), then one kernel reads every weight
//                 once for all sequences, decodes it with bit tricks (shift + lop3 + one FMA),
//                 accumulates in fp32 with one FMA per weight and sequence, adds the outliers.
//                 The kernel takes batch <= kSpqrGpuDecodeKernelMaxBatch (forced path).
//   kMma          (kSpqrGpuDecodeMaxBatch < batch <= kSpqrGpuMmaMaxBatch) The fused tensor-core
//                 kernel (spqr_gpu_mma_kernel.cuh): a gather kernel writes fp16 permuted inputs;
//                 each warp decodes 16 rows x 128 columns at a time straight into mma.m16n8k16 A
//                 fragments (the same shift + lop3 + FMA, then cvt to fp16), the inputs of 8..64
//                 tokens per block are staged in shared memory with cp.async, fp32 accumulation,
//                 outliers added in the same kernel; the token dimension is tiled (64 per block),
//                 so any batch runs. Short layers split K over blocks (kSpqrGpuMmaTargetBlocks)
//                 and a small kernel adds the splits' partial sums in order (deterministic).
//   kDequantGemm  (batch > kSpqrGpuMmaMaxBatch, and the rare configurations above) The layer is
//                 dequantized to fp16 in permuted column order (one coalesced pass, outliers
//                 included), the inputs are gathered and cast to fp16 in permuted order, and cuBLAS
//                 multiplies them on tensor cores with fp32 accumulation.
// Why these bounds (docs/gpu-performance.md, bench/gpu/perf_model.py; predictions for an H200,
// no device has timed them yet): the decode kernel spends 2 instructions per weight plus one fp32
// FMA per weight and sequence, the tensor-core kernel ~5.5 instructions per weight whatever the
// batch (its MMAs run on the tensor pipe) but re-decodes the weights once per 64 tokens, and
// dequantize + cuBLAS pays a fixed fp16 write and re-read of W (4 bytes per weight) and then runs
// at cuBLAS's rate, which mma.sync (modelled at 60 % of the dense fp16 peak that cuBLAS's wgmma
// kernels reach) cannot match for long prompts. Per layer, the model's crossovers are batch
// SEE_DECODE (decode -> tensor-core kernel) and SEE_MMA (tensor-core kernel -> dequantize +
// cuBLAS) on every LLaMA shape it covers; the constants are those, and the benchmark (bench/gpu)
// times all three paths at each batch so they can be moved with a measurement.
//
// Numerics:
//   kDecode: each weight within e_j = 3 2^-24 |scale| (2^wbits + |zero|) of the exact decode (its
//     group's statistics), fp32 sums in another order than the CPU product:
//     |y - y_ref| <= sum_j e_j |x_j| + 2 (n + 64) 2^-24 sum_j (|w_j x_j| + 2 |residual_j x_j|).
//   kMma: kDecode's weight (within e_j), rounded to fp16, times the fp16-rounded input, fp32
//     accumulation (tensor cores, any order; the outliers multiply the fp32 inputs):
//     |y - y_ref| <= sum_j e_j |x_j| + kDequantGemm's bound (fp16 rounding of w and x).
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

inline constexpr int64_t kSpqrGpuDecodeKernelMaxBatch = 16;  // what the decode kernel takes
inline constexpr int64_t kSpqrGpuDecodeMaxBatch = 4;  // the rule: decode up to here
inline constexpr int64_t kSpqrGpuMmaMaxBatch = 128;       // the rule: tensor cores up to here
// Blocks the tensor-core path aims to launch (two per SM of an H100/H200's 132) before it splits K.
inline constexpr int64_t kSpqrGpuMmaTargetBlocks = 264;

enum class SpqrGpuPath { kAuto, kDecode, kMma, kDequantGemm };

// True when the decode kernel handles the layer's configuration (wbits 2..4, beta1 % 8 == 0).
bool SpqrGpuDecodeSupports(const SpqrGpuLayerView& layer);
// The rule above (never returns kAuto).
SpqrGpuPath ChooseSpqrGpuPath(const SpqrGpuLayerView& layer, int64_t batch);
// Device scratch bytes one call needs with `path` (kAuto: the chosen one) and, for kMma, K split
// into `mma_splits` parts (0: the rule's choice).
int64_t SpqrGpuLinearWorkspaceBytes(const SpqrGpuLayerView& layer, int64_t batch,
                                    SpqrGpuPath path = SpqrGpuPath::kAuto, int mma_splits = 0);
// The number of K splits the tensor-core path uses (`forced_splits` > 0: that many, capped at the
// layer's lane chunks; 0: ceil(kSpqrGpuMmaTargetBlocks / blocks of the unsplit grid), at most
// lane_chunks / 2, at least 1).
int64_t SpqrGpuMmaSplits(const SpqrGpuLayerView& layer, int64_t batch, int forced_splits = 0);

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
  int mma_splits = 0;                     // kMma's K splits; 0: the rule (tests force 1)
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
