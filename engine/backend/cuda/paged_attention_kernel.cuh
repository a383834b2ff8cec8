// Kernel body of LaunchPagedAttention (paged_attention.cuh), compiled by nvcc for the device and
// by g++ for the CPU harness (launch.cuh).
//
// Work split: one CTA of 4 warps per (tile of consecutive tokens of one sequence, group of query
// heads sharing one KV head). The CTA holds up to kAttnVecsPerCta query vectors (token, head),
// rows_per_cta tokens times heads_per_cta heads, so that every key and value tile it loads from
// the pool serves all of them: decode rows of a GQA group share it across the group, prefill
// rows across the tile's tokens as well. Warp w owns vectors w, w + 4, w + 8, w + 12.
//
// Per tile of 32 positions (flash-style online softmax, fp32 throughout):
//   1. the CTA copies the 32 key and value vectors from the pool into shared memory with
//      cp.async (each position's block through the block table; positions past the CTA's last
//      row are zeros), keys and values as separate groups so that the next tile's keys load
//      during steps 3-4 and its values during step 2 (one buffer each, no extra shared memory);
//   2. lane j of each warp computes the scores of position j for its warp's vectors (a dot
//      product over head_dim from shared memory, no shuffles), masked causally per vector;
//   3. per vector: warp max of the scores, rescale of the running sum and output by
//      exp(old_max - new_max), probabilities exp(s - new_max) into shared memory;
//   4. lane l accumulates output dims l, l + 32, ... over the 32 positions (values read from
//      shared memory once per position for all of the warp's vectors).
// At the end each output is divided by its warp-summed running sum. Registers per lane: the
// outputs of 4 vectors times ceil(head_dim / 32) dims; nothing grows with the position count.
#pragma once

#include <cstdint>

#include "engine/backend/cuda/launch.cuh"
#include "engine/backend/cuda/paged_attention.cuh"
#include "engine/backend/cuda/ptx.cuh"
#include "engine/backend/cuda/seq_tiles_kernel.cuh"
#include "engine/backend/cuda/store_kv_kernel.cuh"

namespace spqr::kernels {

inline constexpr int kAttnWarps = 4;
inline constexpr int kAttnThreads = kAttnWarps * 32;
inline constexpr int kAttnVecsPerWarp = 4;
inline constexpr int kAttnVecsPerCta = kAttnWarps * kAttnVecsPerWarp;
inline constexpr int kAttnTile = 32;  // positions per tile: one per lane in the score step
inline constexpr int kAttnMaxHeadDim = 256;

// Row stride (floats) of the key tile in shared memory: head_dim rounded to 2 mod 4, so that the
// 16 lanes of a half-warp reading float2 at the same column of 16 consecutive rows hit 16
// distinct bank pairs.
__host__ __device__ constexpr int AttnKeyStride(int head_dim) {
  return head_dim + 2 + (head_dim & 2);
}

// Dynamic shared memory of one CTA: key tile, value tile, the CTA's query vectors.
__host__ __device__ constexpr int AttnSharedFloats(int head_dim) {
  return kAttnTile * AttnKeyStride(head_dim) + kAttnTile * head_dim + kAttnVecsPerCta * head_dim;
}

// What the launcher derives from PagedAttentionParams once per launch.
struct PagedAttentionArgs {
  PagedAttentionParams p;
  int32_t group = 1;          // query heads per KV head
  int32_t heads_per_cta = 1;  // query heads of one KV head handled by one CTA
  int32_t head_chunks = 1;    // ceil(group / heads_per_cta): CTAs along y per KV head
  int32_t rows_per_cta = 1;   // tokens per CTA: kAttnVecsPerCta / heads_per_cta
  float scale = 1.0f;         // 1 / sqrt(head_dim), as the CPU twin computes it
};

// Starts copying the key (kv = 0) or value (kv = 1) vectors of positions [tile0, tile0 + kAttnTile)
// of KV head `kv_head` into `dst` (row stride `stride` floats) with cp.async, 8 bytes at a time
// (head_dim is even; the launcher checked the pool's alignment). Warp w copies rows w, w + 4, ...
// Rows past num_positions, or whose block-table entry is outside the pool (the host validates the
// tables; this only keeps a bad one from reading outside the pool), are zero-filled with plain
// stores: finite, and masked out of every score.
__device__ __forceinline__ void LoadKvTile(const PagedAttentionParams& p,
                                           const AttentionSeqDevice& s, int kv, int kv_head,
                                           int64_t tile0, int64_t num_positions, float* dst,
                                           int stride, int warp, int lane) {
  const int half = p.pool.head_dim / 2;
  for (int j = warp; j < kAttnTile; j += kAttnWarps) {
    float2* row = reinterpret_cast<float2*>(dst + j * stride);
    const int64_t pos = tile0 + j;
    int32_t block = -1;
    if (pos < num_positions) block = p.block_tables[s.block_table_offset + pos / p.pool.block_size];
    if (block >= 0 && block < p.pool.num_blocks) {
      const int32_t slot = static_cast<int32_t>(pos % p.pool.block_size);
      const float2* src = reinterpret_cast<const float2*>(
          p.pool.data + KvPoolOffset(p.pool, block, p.layer, kv, kv_head, slot));
      for (int d2 = lane; d2 < half; d2 += 32) CpAsync<8>(row + d2, src + d2);
    } else {
      for (int d2 = lane; d2 < half; d2 += 32) row[d2] = make_float2(0.0f, 0.0f);
    }
  }
}

// kDimsPerLane = ceil(head_dim / 32) rounded up to 2, 4 or 8 (head_dim <= 64, 128, 256).
template <int kDimsPerLane>
__global__ void __launch_bounds__(kAttnThreads) PagedAttentionKernel(PagedAttentionArgs a) {
  constexpr unsigned kFull = 0xffffffffu;
  const PagedAttentionParams& p = a.p;
  const int warp = static_cast<int>(threadIdx.x / 32);
  const int lane = static_cast<int>(threadIdx.x % 32);

  const SeqTile t = FindSeqTile(p.seqs, p.num_seqs, a.rows_per_cta, blockIdx.x);
  if (t.seq < 0) return;  // the same answer in every warp: the whole CTA leaves
  const AttentionSeqDevice s = p.seqs[t.seq];
  const int rows_left = s.num_tokens - t.first;
  const int rows_here = rows_left < a.rows_per_cta ? rows_left : a.rows_per_cta;
  const int kv_head = static_cast<int>(blockIdx.y) / a.head_chunks;
  const int head0 =
      kv_head * a.group + (static_cast<int>(blockIdx.y) % a.head_chunks) * a.heads_per_cta;
  const int heads_left = (kv_head + 1) * a.group - head0;
  const int heads = heads_left < a.heads_per_cta ? heads_left : a.heads_per_cta;
  const int num_vecs = rows_here * heads;  // vector v: token t.first + v / heads, head v % heads
  const int hd = p.pool.head_dim;
  const int half = hd / 2;
  const int key_stride = AttnKeyStride(hd);
  const int64_t row_floats = static_cast<int64_t>(p.num_heads) * hd;
  const int64_t first_row = static_cast<int64_t>(s.row_offset) + t.first;
  const int64_t first_pos = static_cast<int64_t>(s.start_pos) + t.first;
  // Rows outside [0, rows) or negative positions cannot come from a validated step; skipping
  // them keeps a bad one from reading or writing outside q/out.
  if (first_row < 0 || first_row + rows_here > p.rows || first_pos < 0) return;
  const int64_t num_positions = first_pos + rows_here;  // positions [0, last row's position]

  SPQR_DYNAMIC_SHARED(float, smem);
  float* key_tile = smem;                                 // [kAttnTile][key_stride]
  float* value_tile = key_tile + kAttnTile * key_stride;  // [kAttnTile][hd]
  float* q_tile = value_tile + kAttnTile * hd;            // [kAttnVecsPerCta][hd]
  SPQR_SHARED_ARRAY(float, probs, kAttnWarps* kAttnVecsPerWarp* kAttnTile);

  for (int idx = threadIdx.x; idx < num_vecs * half; idx += kAttnThreads) {
    const int v = idx / half;
    const int d2 = idx - v * half;
    const float2* src = reinterpret_cast<const float2*>(
        p.q + (first_row + v / heads) * row_floats + static_cast<int64_t>(head0 + v % heads) * hd);
    reinterpret_cast<float2*>(q_tile + v * hd)[d2] = src[d2];
  }

  // This warp's vectors: position of each (-1: no vector in that slot), running max and sum
  // (the sum per lane, over the positions that lane scored), outputs.
  int64_t vec_pos[kAttnVecsPerWarp];
  float run_max[kAttnVecsPerWarp];
  float run_sum[kAttnVecsPerWarp];
  float acc[kAttnVecsPerWarp][kDimsPerLane];
#pragma unroll
  for (int i = 0; i < kAttnVecsPerWarp; ++i) {
    const int v = warp + kAttnWarps * i;
    vec_pos[i] = v < num_vecs ? first_pos + v / heads : -1;
    run_max[i] = -INFINITY;
    run_sum[i] = 0.0f;
#pragma unroll
    for (int dd = 0; dd < kDimsPerLane; ++dd) acc[i][dd] = 0.0f;
  }
  float* warp_probs = probs + warp * kAttnVecsPerWarp * kAttnTile;

  // Keys and values of a tile travel as separate cp.async groups so that loading overlaps
  // computing: the next tile's keys load during this tile's softmax and value sum, the next
  // tile's values during the next tile's scores. Groups in flight, in commit order: before the
  // loop K0, V0; at the top of tile t, V(t) and K(t) (wait<1> retires K(t)); after the scores,
  // V(t) and K(t+1) (wait<1> retires V(t)). Past the last tile the commits are empty groups.
  const int64_t num_tiles = (num_positions + kAttnTile - 1) / kAttnTile;
  LoadKvTile(p, s, 0, kv_head, 0, num_positions, key_tile, key_stride, warp, lane);
  CpAsyncCommit();
  LoadKvTile(p, s, 1, kv_head, 0, num_positions, value_tile, hd, warp, lane);
  CpAsyncCommit();
  for (int64_t tile = 0; tile < num_tiles; ++tile) {
    const int64_t tile0 = tile * kAttnTile;
    CpAsyncWait<1>();  // this thread's copies of the tile's keys have landed
    __syncthreads();   // everyone's (and, the first time, q_tile is written)

    // 2. Scores of position tile0 + lane, for the vectors that see at least one position here.
    const float2* key_row = reinterpret_cast<const float2*>(key_tile + lane * key_stride);
    // Even and odd dims in separate sums: two independent fmaf chains per vector instead of one
    // (a decode CTA of a small GQA group has a single vector per warp, latency-bound otherwise).
    float dot_even[kAttnVecsPerWarp];
    float dot_odd[kAttnVecsPerWarp];
#pragma unroll
    for (int i = 0; i < kAttnVecsPerWarp; ++i) dot_even[i] = dot_odd[i] = 0.0f;
    for (int d2 = 0; d2 < half; ++d2) {
      const float2 k2 = key_row[d2];
#pragma unroll
      for (int i = 0; i < kAttnVecsPerWarp; ++i) {
        if (vec_pos[i] < tile0) continue;  // warp-uniform
        const float2 q2 =
            reinterpret_cast<const float2*>(q_tile + (warp + kAttnWarps * i) * hd)[d2];
        dot_even[i] = fmaf(q2.x, k2.x, dot_even[i]);
        dot_odd[i] = fmaf(q2.y, k2.y, dot_odd[i]);
      }
    }

    __syncthreads();  // key_tile is free: load the next tile's keys
    if (tile + 1 < num_tiles) {
      LoadKvTile(p, s, 0, kv_head, tile0 + kAttnTile, num_positions, key_tile, key_stride, warp,
                 lane);
    }
    CpAsyncCommit();

    // 3. Online softmax update.
#pragma unroll
    for (int i = 0; i < kAttnVecsPerWarp; ++i) {
      if (vec_pos[i] < tile0) continue;  // warp-uniform
      const float score =
          tile0 + lane <= vec_pos[i] ? (dot_even[i] + dot_odd[i]) * a.scale : -INFINITY;
      float tile_max = score;  // finite in lane 0 at least: position tile0 <= vec_pos[i]
      for (int offset = 16; offset > 0; offset >>= 1) {
        tile_max = fmaxf(tile_max, __shfl_xor_sync(kFull, tile_max, offset));
      }
      const float new_max = fmaxf(run_max[i], tile_max);
      const float rescale = expf(run_max[i] - new_max);  // 0 on the first tile (-inf)
      const float prob = expf(score - new_max);          // 0 for masked positions
      run_sum[i] = run_sum[i] * rescale + prob;
      run_max[i] = new_max;
#pragma unroll
      for (int dd = 0; dd < kDimsPerLane; ++dd) acc[i][dd] *= rescale;
      warp_probs[i * kAttnTile + lane] = prob;
    }
    CpAsyncWait<1>();  // this thread's copies of the tile's values have landed
    __syncthreads();   // everyone's (and warp_probs is written)

    // 4. acc += prob[j] * value[j] over the tile's positions.
    const int tile_len =
        num_positions - tile0 < kAttnTile ? static_cast<int>(num_positions - tile0) : kAttnTile;
    for (int j = 0; j < tile_len; ++j) {
      float value[kDimsPerLane];
#pragma unroll
      for (int dd = 0; dd < kDimsPerLane; ++dd) {
        const int d = lane + 32 * dd;
        value[dd] = d < hd ? value_tile[j * hd + d] : 0.0f;
      }
#pragma unroll
      for (int i = 0; i < kAttnVecsPerWarp; ++i) {
        if (vec_pos[i] < tile0) continue;  // warp-uniform
        const float prob = warp_probs[i * kAttnTile + j];
#pragma unroll
        for (int dd = 0; dd < kDimsPerLane; ++dd) acc[i][dd] = fmaf(prob, value[dd], acc[i][dd]);
      }
    }
    __syncthreads();  // value_tile (and warp_probs) are free: load the next tile's values
    if (tile + 1 < num_tiles) {
      LoadKvTile(p, s, 1, kv_head, tile0 + kAttnTile, num_positions, value_tile, hd, warp, lane);
    }
    CpAsyncCommit();
  }

#pragma unroll
  for (int i = 0; i < kAttnVecsPerWarp; ++i) {
    if (vec_pos[i] < 0) continue;  // warp-uniform
    float sum = run_sum[i];
    for (int offset = 16; offset > 0; offset >>= 1) sum += __shfl_xor_sync(kFull, sum, offset);
    const float inv_sum = 1.0f / sum;
    const int v = warp + kAttnWarps * i;
    float* out =
        p.out + (first_row + v / heads) * row_floats + static_cast<int64_t>(head0 + v % heads) * hd;
#pragma unroll
    for (int dd = 0; dd < kDimsPerLane; ++dd) {
      const int d = lane + 32 * dd;
      if (d < hd) out[d] = acc[i][dd] * inv_sum;
    }
  }
}

}  // namespace spqr::kernels
