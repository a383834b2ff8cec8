// Causal grouped-query attention over the paged KV pool.
#pragma once

#include <cstdint>
#include <span>

#include "engine/backend/cpu/paged_kv_pool.h"

namespace spqr::cpu {

// One sequence's tokens in the step: rows [row_offset, row_offset + num_tokens) of q/out, at
// positions [start_pos, start_pos + num_tokens). `block_table` maps position / block_size to a
// pool block and covers every position up to the last token (validated by the caller).
struct AttentionSequence {
  int64_t row_offset = 0;
  int64_t num_tokens = 0;
  int64_t start_pos = 0;
  const int32_t* block_table = nullptr;
};

struct AttentionShape {
  int64_t num_heads = 0;
  int64_t kv_heads = 0;  // num_heads is a multiple of it; query head h reads kv head h / group
  int64_t head_dim = 0;
};

// Writes `k` and `v` ([rows, kv_heads * head_dim]) of every token of `seqs` into the pool at
// `layer`, at the slot of the token's position.
void StoreKv(const float* k, const float* v, std::span<const AttentionSequence> seqs,
             const AttentionShape& shape, int64_t layer, PagedKvPool* pool);

// out[row, h*head_dim..] = softmax(q_h . K^T / sqrt(head_dim)) V over positions [0, pos] of the
// row's sequence, reading K/V of `layer` from the pool (StoreKv must have run for this step).
// A query's result depends only on its own sequence's cache, never on the rest of the batch.
void PagedAttention(const float* q, std::span<const AttentionSequence> seqs,
                    const AttentionShape& shape, int64_t layer, const PagedKvPool& pool, float* out,
                    int num_threads);

}  // namespace spqr::cpu
