// Kernel body of LaunchStoreKv (paged_attention.cuh), compiled by nvcc for the device and by g++
// for the CPU harness (launch.cuh).
#pragma once

#include <cstdint>

#include "engine/backend/cuda/launch.cuh"
#include "engine/backend/cuda/paged_attention.cuh"
#include "engine/backend/cuda/seq_tiles_kernel.cuh"

namespace spqr::kernels {

inline constexpr int kStoreKvThreads = 128;

// Offset in floats of the key (kv = 0) or value (kv = 1) vector of `slot` in `block`, as
// cpu::PagedKvPool::Offset: [block][layer][k|v][kv_head][slot][head_dim].
__device__ __forceinline__ int64_t KvPoolOffset(const KvPoolDeviceView& pool, int64_t block,
                                                int32_t layer, int kv, int32_t kv_head,
                                                int32_t slot) {
  return (((block * pool.num_layers + layer) * 2 + kv) * pool.kv_heads + kv_head) *
             static_cast<int64_t>(pool.block_size) * pool.head_dim +
         static_cast<int64_t>(slot) * pool.head_dim;
}

// One block per token (the grid has `rows` blocks along x; see seq_tiles_kernel.cuh for how a
// block finds its sequence): the block copies the token's kv_heads key and value vectors into
// their slot as float2 (head_dim is even; the launcher checked 8-byte alignment). A token whose
// row or block-table entry is out of range (the host validates both; this only keeps a bad table
// from writing outside the pool) is skipped.
__global__ void __launch_bounds__(kStoreKvThreads) StoreKvKernel(StoreKvParams p) {
  const SeqTile t = FindSeqTile(p.seqs, p.num_seqs, 1, blockIdx.x);
  if (t.seq < 0) return;
  const AttentionSeqDevice s = p.seqs[t.seq];
  const int64_t row = static_cast<int64_t>(s.row_offset) + t.first;
  const int64_t pos = static_cast<int64_t>(s.start_pos) + t.first;
  if (row < 0 || row >= p.rows || pos < 0) return;
  const int32_t block = p.block_tables[s.block_table_offset + pos / p.pool.block_size];
  if (block < 0 || block >= p.pool.num_blocks) return;
  const int32_t slot = static_cast<int32_t>(pos % p.pool.block_size);

  const int half = p.pool.head_dim / 2;
  const int64_t row_floats = static_cast<int64_t>(p.pool.kv_heads) * p.pool.head_dim;
  const float2* k_src = reinterpret_cast<const float2*>(p.k + row * row_floats);
  const float2* v_src = reinterpret_cast<const float2*>(p.v + row * row_floats);
  const int total = p.pool.kv_heads * half;
  for (int idx = threadIdx.x; idx < total; idx += kStoreKvThreads) {
    const int head = idx / half;
    const int d2 = idx - head * half;
    float2* k_dst = reinterpret_cast<float2*>(p.pool.data +
                                              KvPoolOffset(p.pool, block, p.layer, 0, head, slot));
    float2* v_dst = reinterpret_cast<float2*>(p.pool.data +
                                              KvPoolOffset(p.pool, block, p.layer, 1, head, slot));
    k_dst[d2] = k_src[idx];
    v_dst[d2] = v_src[idx];
  }
}

}  // namespace spqr::kernels
