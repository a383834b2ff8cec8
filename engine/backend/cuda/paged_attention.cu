#include <cmath>
#include <cstdint>

#include "absl/strings/str_format.h"
#include "engine/backend/cuda/cuda_status.h"
#include "engine/backend/cuda/kernel_launch_checks.h"
#include "engine/backend/cuda/paged_attention.cuh"
#include "engine/backend/cuda/paged_attention_kernel.cuh"
#include "engine/backend/cuda/store_kv_kernel.cuh"
#include "engine/util/status_macros.h"

namespace spqr {
namespace {

constexpr int64_t kInt32Max = 0x7fffffff;

// The kernels read and write head vectors as float2.
absl::Status CheckFloat2Aligned(const void* pointer, const char* op, const char* field) {
  RETURN_IF_ERROR(CheckNotNull(pointer, op, field));
  if (reinterpret_cast<uintptr_t>(pointer) % 8 != 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: %s is not 8-byte aligned (the kernels move float2)", op, field));
  }
  return absl::OkStatus();
}

// The pool's shape and the layer index (the data pointer is checked once rows > 0).
absl::Status CheckPoolShape(const KvPoolDeviceView& pool, int32_t layer, const char* op) {
  RETURN_IF_ERROR(CheckInRange(pool.num_layers, 1, kInt32Max, op, "pool.num_layers"));
  RETURN_IF_ERROR(CheckInRange(layer, 0, pool.num_layers - 1, op, "layer"));
  RETURN_IF_ERROR(CheckInRange(pool.kv_heads, 1, 65535, op, "pool.kv_heads"));
  RETURN_IF_ERROR(CheckInRange(pool.head_dim, 2, kernels::kAttnMaxHeadDim, op, "pool.head_dim"));
  if (pool.head_dim % 2 != 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: pool.head_dim = %d must be even", op, pool.head_dim));
  }
  RETURN_IF_ERROR(CheckInRange(pool.num_blocks, 1, kInt32Max, op, "pool.num_blocks"));
  RETURN_IF_ERROR(CheckInRange(pool.block_size, 1, 1 << 20, op, "pool.block_size"));
  // Every offset the kernels form must fit an int64 (long before it would fit in memory).
  const double floats = static_cast<double>(pool.num_blocks) * pool.block_size * 2.0 *
                        pool.num_layers * pool.kv_heads * pool.head_dim;
  if (floats > 0x1p60) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: the pool's shape describes %g floats, more than 2^60", op, floats));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status LaunchStoreKv(const StoreKvParams& p, cudaStream_t stream) {
  constexpr char kOp[] = "LaunchStoreKv";
  RETURN_IF_ERROR(CheckInRange(p.rows, 0, kInt32Max, kOp, "rows"));
  RETURN_IF_ERROR(CheckPoolShape(p.pool, p.layer, kOp));
  if (p.rows == 0) return absl::OkStatus();
  RETURN_IF_ERROR(CheckInRange(p.num_seqs, 1, kInt32Max, kOp, "num_seqs"));
  RETURN_IF_ERROR(CheckFloat2Aligned(p.k, kOp, "k"));
  RETURN_IF_ERROR(CheckFloat2Aligned(p.v, kOp, "v"));
  RETURN_IF_ERROR(CheckNotNull(p.seqs, kOp, "seqs"));
  RETURN_IF_ERROR(CheckNotNull(p.block_tables, kOp, "block_tables"));
  RETURN_IF_ERROR(CheckFloat2Aligned(p.pool.data, kOp, "pool.data"));
  // One block per token: sum(num_tokens) == rows blocks (extra blocks, if the host's count were
  // larger, find no token and exit).
  SPQR_LAUNCH(kernels::StoreKvKernel, static_cast<unsigned>(p.rows), kernels::kStoreKvThreads, 0,
              stream, p);
  CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

namespace {

template <int kDimsPerLane>
absl::Status LaunchAttention(const kernels::PagedAttentionArgs& args, dim3 grid,
                             cudaStream_t stream) {
  auto* kernel = &kernels::PagedAttentionKernel<kDimsPerLane>;
  const size_t smem = sizeof(float) * kernels::AttnSharedFloats(args.p.pool.head_dim);
  if (smem > 48 * 1024) {  // head_dim > 128 on sm_90; the opt-in limit there is 227 KiB
    CUDA_RETURN_IF_ERROR(cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel),
                                              cudaFuncAttributeMaxDynamicSharedMemorySize,
                                              static_cast<int>(smem)));
  }
  SPQR_LAUNCH(kernel, grid, kernels::kAttnThreads, smem, stream, args);
  CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

}  // namespace

absl::Status LaunchPagedAttention(const PagedAttentionParams& p, cudaStream_t stream) {
  constexpr char kOp[] = "LaunchPagedAttention";
  RETURN_IF_ERROR(CheckInRange(p.rows, 0, kInt32Max / 2, kOp, "rows"));
  RETURN_IF_ERROR(CheckPoolShape(p.pool, p.layer, kOp));
  RETURN_IF_ERROR(CheckInRange(p.num_heads, 1, kInt32Max, kOp, "num_heads"));
  if (p.num_heads % p.pool.kv_heads != 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: num_heads = %d is not a multiple of pool.kv_heads = %d", kOp,
                        p.num_heads, p.pool.kv_heads));
  }
  if (p.rows == 0) return absl::OkStatus();
  RETURN_IF_ERROR(CheckInRange(p.num_seqs, 1, kInt32Max / 2, kOp, "num_seqs"));
  RETURN_IF_ERROR(CheckInRange(p.max_positions, 1, kInt32Max, kOp, "max_positions"));
  RETURN_IF_ERROR(CheckFloat2Aligned(p.q, kOp, "q"));
  RETURN_IF_ERROR(CheckFloat2Aligned(p.out, kOp, "out"));
  RETURN_IF_ERROR(CheckNotNull(p.seqs, kOp, "seqs"));
  RETURN_IF_ERROR(CheckNotNull(p.block_tables, kOp, "block_tables"));
  RETURN_IF_ERROR(CheckFloat2Aligned(p.pool.data, kOp, "pool.data"));

  kernels::PagedAttentionArgs args;
  args.p = p;
  args.group = p.num_heads / p.pool.kv_heads;
  args.heads_per_cta =
      args.group < kernels::kAttnVecsPerCta ? args.group : kernels::kAttnVecsPerCta;
  args.head_chunks = (args.group + args.heads_per_cta - 1) / args.heads_per_cta;
  args.rows_per_cta = kernels::kAttnVecsPerCta / args.heads_per_cta;
  args.scale = 1.0f / std::sqrt(static_cast<float>(p.pool.head_dim));
  const int64_t grid_y = int64_t{p.pool.kv_heads} * args.head_chunks;
  RETURN_IF_ERROR(CheckInRange(grid_y, 1, 65535, kOp, "pool.kv_heads * ceil(group / 16)"));
  // Tiles of rows_per_cta tokens, per sequence: at most ceil(rows / rows_per_cta) + num_seqs.
  const int64_t grid_x = (p.rows + args.rows_per_cta - 1) / args.rows_per_cta + p.num_seqs;
  const dim3 grid(static_cast<unsigned>(grid_x), static_cast<unsigned>(grid_y));
  if (p.pool.head_dim <= 64) return LaunchAttention<2>(args, grid, stream);
  if (p.pool.head_dim <= 128) return LaunchAttention<4>(args, grid, stream);
  return LaunchAttention<8>(args, grid, stream);
}

}  // namespace spqr
