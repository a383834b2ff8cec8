#include <algorithm>

#include "absl/strings/str_format.h"
#include "engine/backend/cuda/cuda_status.h"
#include "engine/backend/cuda/embedding.cuh"
#include "engine/backend/cuda/embedding_kernel.cuh"
#include "engine/backend/cuda/kernel_launch_checks.h"
#include "engine/util/status_macros.h"

namespace spqr {
namespace {

template <typename T>
absl::Status Launch(const EmbeddingParams& p, cudaStream_t stream) {
  // gridDim.y is limited to 65535 rows per launch; larger steps are split.
  constexpr int64_t kMaxRowsPerLaunch = 65535;
  const unsigned col_blocks = static_cast<unsigned>((p.hidden + kernels::kEmbeddingThreads - 1) /
                                                    kernels::kEmbeddingThreads);
  auto* kernel = &kernels::EmbeddingKernel<T>;
  for (int64_t row0 = 0; row0 < p.rows; row0 += kMaxRowsPerLaunch) {
    const int64_t rows = std::min(kMaxRowsPerLaunch, p.rows - row0);
    const dim3 grid(col_blocks, static_cast<unsigned>(rows));
    SPQR_LAUNCH(kernel, grid, kernels::kEmbeddingThreads, 0, stream, static_cast<const T*>(p.table),
                p.ids + row0, p.output + row0 * p.hidden, p.hidden);
    CUDA_RETURN_IF_ERROR(cudaGetLastError());
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status LaunchEmbedding(const EmbeddingParams& p, cudaStream_t stream) {
  constexpr char kOp[] = "LaunchEmbedding";
  RETURN_IF_ERROR(CheckInRange(p.rows, 0, kMaxKernelRows, kOp, "rows"));
  RETURN_IF_ERROR(CheckInRange(p.hidden, 1, kMaxKernelRows, kOp, "hidden"));
  if (p.rows == 0) return absl::OkStatus();
  RETURN_IF_ERROR(CheckNotNull(p.table, kOp, "table"));
  RETURN_IF_ERROR(CheckNotNull(p.ids, kOp, "ids"));
  RETURN_IF_ERROR(CheckNotNull(p.output, kOp, "output"));
  switch (p.table_dtype) {
    case DType::kF32:
      return Launch<float>(p, stream);
    case DType::kF16:
      return Launch<__half>(p, stream);
    case DType::kBF16:
      return Launch<__nv_bfloat16>(p, stream);
    default:
      return absl::InvalidArgumentError(absl::StrFormat(
          "%s: table_dtype %s is not F32, F16 or BF16", kOp, DTypeName(p.table_dtype)));
  }
}

}  // namespace spqr
