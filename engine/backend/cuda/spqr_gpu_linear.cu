#include <algorithm>
#include <string>

#include "absl/strings/str_cat.h"
#include "engine/backend/cuda/cuda_status.h"
#include "engine/backend/cuda/kernel_launch_checks.h"
#include "engine/backend/cuda/spqr_gpu_linear.cuh"
#include "engine/backend/cuda/spqr_gpu_linear_kernel.cuh"
#include "engine/backend/cuda/spqr_gpu_mma_kernel.cuh"
#include "engine/util/status_macros.h"

namespace spqr {
namespace {

using kernels::kSpqrGpuDecodeWarps;
using kernels::kSpqrGpuDequantizeThreads;
using kernels::kSpqrGpuGatherThreads;
using kernels::kSpqrGpuMmaRowsPerBlock;
using kernels::kSpqrGpuMmaThreads;

constexpr int64_t kAlign = 256;  // workspace sub-buffers start on 256-byte boundaries

int64_t AlignUp(int64_t v) { return (v + kAlign - 1) / kAlign * kAlign; }

// Batch rounded up to a decode kernel instance (1, 2, 4, 8, 16).
int64_t PaddedBatch(int64_t batch) {
  int64_t b = 1;
  while (b < batch) b *= 2;
  return b;
}

unsigned GridFor(int64_t count, int threads) {
  return static_cast<unsigned>(std::clamp<int64_t>((count + threads - 1) / threads, 1, 65536));
}

// Rows per warp: more rows share each input load (the L1/L2 traffic of the inputs is 4 B / R
// bytes per weight), but R x B fp32 sums plus R x 4W code words per lane must fit the registers
// without spilling (ptxas -warn-spills -Werror): 4, except 3 at batch 16 (with 4 rows wbits 4
// spills and wbits 2/3 sit at 249-254 of the 255 registers).
template <int W, int B>
constexpr int RowsPerWarp() {
  return B == 16 ? 3 : 4;
}

template <int W, int B, bool kF16 = false>
void LaunchDecode(const SpqrGpuLayerView& l, const float* xt, float* y, int64_t batch,
                  cudaStream_t stream) {
  // The fp16-arithmetic instances hold more live values per weight (4 rows spill at B = 4): 2.
  constexpr int R = kF16 ? 2 : RowsPerWarp<W, B>();
  const int64_t rows_per_block = int64_t{kSpqrGpuDecodeWarps} * R;
  const unsigned blocks =
      static_cast<unsigned>((l.out_features + rows_per_block - 1) / rows_per_block);
  auto* kernel = &kernels::SpqrGpuDecodeKernel<W, B, R, kF16>;
  SPQR_LAUNCH(kernel, blocks, kSpqrGpuDecodeWarps * 32, 0, stream, l, xt, y, batch);
}

template <int W>
void LaunchDecodeForBatch(const SpqrGpuLayerView& l, const float* xt, float* y, int64_t batch,
                          int64_t bpad, cudaStream_t stream) {
  if (l.fp16_arithmetic != 0) {  // batch <= kSpqrGpuDecodeF16MaxBatch (checked by the caller)
    switch (bpad) {
      case 1:
        return LaunchDecode<W, 1, true>(l, xt, y, batch, stream);
      case 2:
        return LaunchDecode<W, 2, true>(l, xt, y, batch, stream);
      default:
        return LaunchDecode<W, 4, true>(l, xt, y, batch, stream);
    }
  }
  switch (bpad) {
    case 1:
      return LaunchDecode<W, 1>(l, xt, y, batch, stream);
    case 2:
      return LaunchDecode<W, 2>(l, xt, y, batch, stream);
    case 4:
      return LaunchDecode<W, 4>(l, xt, y, batch, stream);
    case 8:
      return LaunchDecode<W, 8>(l, xt, y, batch, stream);
    default:
      return LaunchDecode<W, 16>(l, xt, y, batch, stream);
  }
}

// The fast dequantization (wbits 2..4, beta1 % 8 == 0): dense tiles, then the outliers.
template <typename OutT>
void LaunchDequantizeTiles(const SpqrGpuLayerView& l, OutT* out, cudaStream_t stream) {
  constexpr int kRowsPerBlock = kSpqrGpuDequantizeThreads / 32;
  const unsigned blocks =
      static_cast<unsigned>((l.out_features + kRowsPerBlock - 1) / kRowsPerBlock);
  auto* tiles = l.wbits == 2   ? &kernels::SpqrGpuDequantizeTilesKernel<2, OutT>
                : l.wbits == 3 ? &kernels::SpqrGpuDequantizeTilesKernel<3, OutT>
                               : &kernels::SpqrGpuDequantizeTilesKernel<4, OutT>;
  SPQR_LAUNCH(tiles, blocks, kSpqrGpuDequantizeThreads, 0, stream, l, out);
  auto* outliers = &kernels::SpqrGpuDequantizeOutliersKernel<OutT>;
  SPQR_LAUNCH(outliers, GridFor(l.out_features, kSpqrGpuDequantizeThreads),
              kSpqrGpuDequantizeThreads, 0, stream, l, out);
}

// n8 token tiles per block of the tensor-core kernel: the fewest that hold the batch, at most 8.
int MmaTokenTiles(int64_t batch) {
  return batch <= 8 ? 1 : batch <= 16 ? 2 : batch <= 32 ? 4 : kernels::kSpqrGpuMmaMaxTokenTiles;
}

struct MmaGrid {
  int64_t row_blocks, token_blocks, splits, chunks_per_split;
};

MmaGrid MmaGridFor(const SpqrGpuLayerView& l, int64_t batch, int forced_splits) {
  MmaGrid grid;
  grid.row_blocks = (l.out_features + kSpqrGpuMmaRowsPerBlock - 1) / kSpqrGpuMmaRowsPerBlock;
  grid.token_blocks = (batch + 8 * MmaTokenTiles(batch) - 1) / (8 * MmaTokenTiles(batch));
  const int64_t tiles = grid.row_blocks * grid.token_blocks;
  int64_t splits = forced_splits;
  if (splits <= 0) {
    // The rule: enough blocks for every SM, each split >= 2 chunks, and the partial sums (written
    // and read back: 8 S batch m bytes) at most about a quarter of the codes' bytes (n m W / 8):
    // S <= n / (32 batch) at W = 2..4 (spqr_gpu_linear.cuh).
    splits = std::min({(kSpqrGpuMmaTargetBlocks + tiles - 1) / tiles, l.lane_chunks / 2,
                       l.in_features / (32 * batch)});
  }
  splits = std::clamp<int64_t>(splits, 1, std::min<int64_t>(l.lane_chunks, 65535));
  grid.chunks_per_split = (l.lane_chunks + splits - 1) / splits;
  grid.splits = (l.lane_chunks + grid.chunks_per_split - 1) / grid.chunks_per_split;  // none empty
  return grid;
}

template <int W, int NT>
void LaunchMma(const SpqrGpuLayerView& l, const __half* xh, const float* x, float* out,
               int64_t batch, const MmaGrid& grid, cudaStream_t stream) {
  auto* kernel = &kernels::SpqrGpuMmaKernel<W, NT>;
  const dim3 blocks(static_cast<unsigned>(grid.row_blocks),
                    static_cast<unsigned>(grid.token_blocks), static_cast<unsigned>(grid.splits));
  SPQR_LAUNCH(kernel, blocks, kSpqrGpuMmaThreads, 0, stream, l, xh, x, out, batch,
              grid.chunks_per_split);
}

template <int W>
void LaunchMmaForBatch(const SpqrGpuLayerView& l, const __half* xh, const float* x, float* out,
                       int64_t batch, const MmaGrid& grid, cudaStream_t stream) {
  switch (MmaTokenTiles(batch)) {
    case 1:
      return LaunchMma<W, 1>(l, xh, x, out, batch, grid, stream);
    case 2:
      return LaunchMma<W, 2>(l, xh, x, out, batch, grid, stream);
    case 4:
      return LaunchMma<W, 4>(l, xh, x, out, batch, grid, stream);
    default:
      return LaunchMma<W, 8>(l, xh, x, out, batch, grid, stream);
  }
}

}  // namespace

bool SpqrGpuDecodeSupports(const SpqrGpuLayerView& l) {
  return l.wbits >= 2 && l.wbits <= 4 && l.beta1 > 0 && l.beta1 % 8 == 0;
}

SpqrGpuPath ChooseSpqrGpuPath(const SpqrGpuLayerView& l, int64_t batch) {
  if (!SpqrGpuDecodeSupports(l)) return SpqrGpuPath::kDequantGemm;
  if (batch <= kSpqrGpuDecodeMaxBatch) return SpqrGpuPath::kDecode;
  // The tensor-core kernel has no "fp16 arithmetic" instance.
  if (batch <= kSpqrGpuMmaMaxBatch && l.fp16_arithmetic == 0) return SpqrGpuPath::kMma;
  return SpqrGpuPath::kDequantGemm;
}

int64_t SpqrGpuMmaSplits(const SpqrGpuLayerView& l, int64_t batch, int forced_splits) {
  return MmaGridFor(l, batch, forced_splits).splits;
}

int64_t SpqrGpuLinearWorkspaceBytes(const SpqrGpuLayerView& l, int64_t batch, SpqrGpuPath path,
                                    int mma_splits) {
  if (path == SpqrGpuPath::kAuto) path = ChooseSpqrGpuPath(l, batch);
  const int64_t m = l.out_features, n = l.in_features;
  if (path == SpqrGpuPath::kDecode) return AlignUp(n * PaddedBatch(batch) * 4);
  if (path == SpqrGpuPath::kMma) {
    const int64_t splits = MmaGridFor(l, batch, mma_splits).splits;
    return AlignUp(batch * n * 2) + (splits > 1 ? AlignUp(splits * batch * m * 4) : 0);
  }
  return AlignUp(m * n * 2) + AlignUp(batch * n * 2);
}

absl::Status LaunchSpqrGpuLinear(const SpqrGpuLinearParams& p, cudaStream_t stream) {
  constexpr char kOp[] = "LaunchSpqrGpuLinear";
  RETURN_IF_ERROR(CheckSpqrGpuLayerView(p.layer, kOp));
  RETURN_IF_ERROR(CheckInRange(p.batch, 0, kMaxKernelRows, kOp, "batch"));
  if (p.batch == 0) return absl::OkStatus();
  RETURN_IF_ERROR(CheckNotNull(p.x, kOp, "x"));
  RETURN_IF_ERROR(CheckNotNull(p.y, kOp, "y"));
  RETURN_IF_ERROR(CheckNotNull(p.workspace, kOp, "workspace"));
  const SpqrGpuLayerView& l = p.layer;
  const SpqrGpuPath path = p.path == SpqrGpuPath::kAuto ? ChooseSpqrGpuPath(l, p.batch) : p.path;
  const int64_t need = SpqrGpuLinearWorkspaceBytes(l, p.batch, path, p.mma_splits);
  if (p.workspace_bytes < need) {
    return absl::InvalidArgumentError(absl::StrCat(kOp, ": workspace_bytes = ", p.workspace_bytes,
                                                   " is less than the ", need, " bytes needed"));
  }
  if (reinterpret_cast<uintptr_t>(p.workspace) % 16 != 0) {
    return absl::InvalidArgumentError(absl::StrCat(kOp, ": workspace is not 16-byte aligned"));
  }
  const int64_t m = l.out_features, n = l.in_features;

  if (path == SpqrGpuPath::kDecode) {
    const int64_t max_batch =
        l.fp16_arithmetic ? kSpqrGpuDecodeF16MaxBatch : kSpqrGpuDecodeKernelMaxBatch;
    if (!SpqrGpuDecodeSupports(l) || p.batch > max_batch) {
      return absl::InvalidArgumentError(
          absl::StrCat(kOp, ": the decode path needs batch <= ", max_batch,
                       l.fp16_arithmetic ? " (fp16 arithmetic)" : "",
                       ", wbits in 2..4 and beta1 % 8 == 0; got batch ", p.batch, ", wbits ",
                       l.wbits, ", beta1 ", l.beta1));
    }
    const int64_t bpad = PaddedBatch(p.batch);
    float* xt = static_cast<float*>(p.workspace);
    SPQR_LAUNCH(kernels::SpqrGpuGatherTransposedKernel, GridFor(n * bpad, kSpqrGpuGatherThreads),
                kSpqrGpuGatherThreads, 0, stream, l.perm, p.x, xt, n, p.batch, bpad);
    CUDA_RETURN_IF_ERROR(cudaGetLastError());
    switch (l.wbits) {
      case 2:
        LaunchDecodeForBatch<2>(l, xt, p.y, p.batch, bpad, stream);
        break;
      case 3:
        LaunchDecodeForBatch<3>(l, xt, p.y, p.batch, bpad, stream);
        break;
      default:
        LaunchDecodeForBatch<4>(l, xt, p.y, p.batch, bpad, stream);
        break;
    }
    CUDA_RETURN_IF_ERROR(cudaGetLastError());
    return absl::OkStatus();
  }

  if (path == SpqrGpuPath::kMma) {
    if (!SpqrGpuDecodeSupports(l) || l.fp16_arithmetic) {
      return absl::InvalidArgumentError(
          absl::StrCat(kOp,
                       ": the tensor-core path needs wbits in 2..4, beta1 % 8 == 0 and the fp32 "
                       "decode arithmetic; got wbits ",
                       l.wbits, ", beta1 ", l.beta1, l.fp16_arithmetic ? ", fp16 arithmetic" : ""));
    }
    if (n >= (int64_t{1} << 27)) {  // 32-bit group bit offsets in the kernel
      return absl::InvalidArgumentError(
          absl::StrCat(kOp, ": in_features ", n, " is too large for the tensor-core path"));
    }
    if (p.batch > 65535LL * 8 * kernels::kSpqrGpuMmaMaxTokenTiles) {
      return absl::InvalidArgumentError(
          absl::StrCat(kOp, ": batch ", p.batch, " is too large for the tensor-core path"));
    }
    const MmaGrid grid = MmaGridFor(l, p.batch, p.mma_splits);
    auto* xh = static_cast<__half*>(p.workspace);
    float* out =
        grid.splits > 1
            ? reinterpret_cast<float*>(static_cast<char*>(p.workspace) + AlignUp(p.batch * n * 2))
            : p.y;
    SPQR_LAUNCH(kernels::SpqrGpuGatherF16Kernel, GridFor(p.batch * n, kSpqrGpuGatherThreads),
                kSpqrGpuGatherThreads, 0, stream, l.perm, p.x, xh, n, p.batch * n);
    CUDA_RETURN_IF_ERROR(cudaGetLastError());
    switch (l.wbits) {
      case 2:
        LaunchMmaForBatch<2>(l, xh, p.x, out, p.batch, grid, stream);
        break;
      case 3:
        LaunchMmaForBatch<3>(l, xh, p.x, out, p.batch, grid, stream);
        break;
      default:
        LaunchMmaForBatch<4>(l, xh, p.x, out, p.batch, grid, stream);
        break;
    }
    CUDA_RETURN_IF_ERROR(cudaGetLastError());
    if (grid.splits > 1) {
      SPQR_LAUNCH(kernels::SpqrGpuSplitReduceKernel, GridFor(p.batch * m, kSpqrGpuGatherThreads),
                  kSpqrGpuGatherThreads, 0, stream, out, p.y, p.batch * m,
                  static_cast<int>(grid.splits));
      CUDA_RETURN_IF_ERROR(cudaGetLastError());
    }
    return absl::OkStatus();
  }

  RETURN_IF_ERROR(CheckNotNull(p.cublas, kOp, "cublas (needed by the dequantize + GEMM path)"));
  if (m > 0x7fffffff || n > 0x7fffffff || p.batch > 0x7fffffff) {
    return absl::InvalidArgumentError(absl::StrCat(kOp, ": shape too large for cuBLAS"));
  }
  auto* w16 = static_cast<__half*>(p.workspace);
  auto* x16 = reinterpret_cast<__half*>(static_cast<char*>(p.workspace) + AlignUp(m * n * 2));
  RETURN_IF_ERROR(LaunchSpqrGpuDequantize(l, w16, DType::kF16, stream));
  SPQR_LAUNCH(kernels::SpqrGpuGatherF16Kernel, GridFor(p.batch * n, kSpqrGpuGatherThreads),
              kSpqrGpuGatherThreads, 0, stream, l.perm, p.x, x16, n, p.batch * n);
  CUDA_RETURN_IF_ERROR(cudaGetLastError());
  DenseGemmParams g;
  g.x = x16;
  g.w = w16;
  g.y = p.y;
  g.dtype = DType::kF16;
  g.m = p.batch;
  g.n = m;
  g.k = n;
  absl::Status st = DenseGemm(*p.cublas, g);
  if (!st.ok()) return absl::Status(st.code(), absl::StrCat(kOp, ": ", st.message()));
  return absl::OkStatus();
}

absl::Status LaunchSpqrGpuDequantize(const SpqrGpuLayerView& l, void* output, DType dtype,
                                     cudaStream_t stream) {
  constexpr char kOp[] = "LaunchSpqrGpuDequantize";
  RETURN_IF_ERROR(CheckSpqrGpuLayerView(l, kOp));
  RETURN_IF_ERROR(CheckNotNull(output, kOp, "output"));
  if (dtype != DType::kF32 && dtype != DType::kF16) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": dtype must be F32 or F16, not ", std::string(DTypeName(dtype))));
  }
  if (SpqrGpuDecodeSupports(l) && l.fp16_arithmetic == 0) {  // the tiles kernels are fp32 only
    if (dtype == DType::kF32) {
      LaunchDequantizeTiles(l, static_cast<float*>(output), stream);
    } else {
      LaunchDequantizeTiles(l, static_cast<__half*>(output), stream);
    }
    CUDA_RETURN_IF_ERROR(cudaGetLastError());
    return absl::OkStatus();
  }
  const dim3 blocks(GridFor((l.in_features + 7) / 8, kSpqrGpuDequantizeThreads),
                    static_cast<unsigned>(std::min<int64_t>(l.out_features, 65535)));
  // An "fp16 arithmetic" layer: the variant's instance of the generic kernel.
  const bool f16 = l.fp16_arithmetic != 0;
  if (dtype == DType::kF32) {
    auto* kernel = f16 ? &kernels::SpqrGpuDequantizeKernel<float, true>
                       : &kernels::SpqrGpuDequantizeKernel<float, false>;
    SPQR_LAUNCH(kernel, blocks, kSpqrGpuDequantizeThreads, 0, stream, l,
                static_cast<float*>(output));
  } else {
    auto* kernel = f16 ? &kernels::SpqrGpuDequantizeKernel<__half, true>
                       : &kernels::SpqrGpuDequantizeKernel<__half, false>;
    SPQR_LAUNCH(kernel, blocks, kSpqrGpuDequantizeThreads, 0, stream, l,
                static_cast<__half*>(output));
  }
  CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

}  // namespace spqr
