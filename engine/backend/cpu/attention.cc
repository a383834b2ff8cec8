#include "engine/backend/cpu/attention.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <vector>

#include "engine/backend/cpu/simd.h"
#include "engine/backend/cpu/worker_pool.h"

namespace spqr::cpu {

void StoreKv(const float* k, const float* v, std::span<const AttentionSequence> seqs,
             const AttentionShape& shape, int64_t layer, PagedKvPool* pool) {
  const int64_t hd = shape.head_dim;
  const int64_t row_floats = shape.kv_heads * hd;
  const int64_t bs = pool->block_size();
  for (const AttentionSequence& s : seqs) {
    for (int64_t i = 0; i < s.num_tokens; ++i) {
      const int64_t pos = s.start_pos + i;
      const int64_t block = s.block_table[pos / bs];
      const int64_t slot = pos % bs;
      const int64_t row = s.row_offset + i;
      for (int64_t h = 0; h < shape.kv_heads; ++h) {
        std::memcpy(pool->Slot(block, layer, 0, h, slot), k + row * row_floats + h * hd,
                    hd * sizeof(float));
        std::memcpy(pool->Slot(block, layer, 1, h, slot), v + row * row_floats + h * hd,
                    hd * sizeof(float));
      }
    }
  }
}

namespace {

// Queries per work item: small enough to balance threads on a short prefill, large enough that
// the scheduling overhead is noise.
constexpr int64_t kQueryTile = 16;
// Largest GQA group processed as one work item (bounds a stack array).
constexpr int64_t kMaxGroup = 16;

struct WorkItem {
  int32_t seq;
  int32_t first_head;  // query heads [first_head, first_head + heads), all of one KV head
  int32_t heads;
  int64_t first;  // first token of the tile within the sequence's chunk
};

// Query heads [h0, h0 + nh) of one token (sharing KV head `kv_head`) against positions [0, pos]:
// scores, softmax, weighted sum of values. Each key and value row is loaded once for all nh
// heads. Per head the arithmetic is the same whatever nh is, so results never depend on how the
// work was split.
void AttendHeads(const float* q_row, int64_t h0, int64_t nh, const AttentionSequence& s,
                 int64_t pos, int64_t kv_head, int64_t head_dim, float scale, int64_t layer,
                 const PagedKvPool& pool, std::vector<float>* scores, float* out_row) {
  const int64_t bs = pool.block_size();
  const int64_t n = pos + 1;
  scores->resize(nh * n);
  float* sc = scores->data();
  for (int64_t j = 0; j < n; ++j) {
    const float* key = pool.Slot(s.block_table[j / bs], layer, 0, kv_head, j % bs);
    for (int64_t h = 0; h < nh; ++h) {
      sc[h * n + j] = DotF32(q_row + (h0 + h) * head_dim, key, head_dim) * scale;
    }
  }
  float inv_sum[kMaxGroup];
  for (int64_t h = 0; h < nh; ++h) {
    float* sh = sc + h * n;
    float max_score = -INFINITY;
    for (int64_t j = 0; j < n; ++j) max_score = std::max(max_score, sh[j]);
    float sum = 0.0f;
    for (int64_t j = 0; j < n; ++j) {
      sh[j] = std::exp(sh[j] - max_score);
      sum += sh[j];
    }
    inv_sum[h] = 1.0f / sum;
    std::fill(out_row + (h0 + h) * head_dim, out_row + (h0 + h + 1) * head_dim, 0.0f);
  }
  for (int64_t j = 0; j < n; ++j) {
    const float* value = pool.Slot(s.block_table[j / bs], layer, 1, kv_head, j % bs);
    for (int64_t h = 0; h < nh; ++h) {
      const float p = sc[h * n + j] * inv_sum[h];
      float* o = out_row + (h0 + h) * head_dim;
      for (int64_t d = 0; d < head_dim; ++d) o[d] += p * value[d];
    }
  }
}

}  // namespace

void PagedAttention(const float* q, std::span<const AttentionSequence> seqs,
                    const AttentionShape& shape, int64_t layer, const PagedKvPool& pool, float* out,
                    int num_threads) {
  const int64_t hd = shape.head_dim;
  const int64_t group = shape.num_heads / shape.kv_heads;
  const int64_t row_floats = shape.num_heads * hd;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));

  // Whole GQA groups per work item share K/V loads; split them into single heads when that
  // would leave threads idle (decode with few KV heads).
  int64_t tiles = 0;
  for (const AttentionSequence& s : seqs) tiles += (s.num_tokens + kQueryTile - 1) / kQueryTile;
  const int64_t heads_per_item =
      (group <= kMaxGroup && tiles * shape.kv_heads >= 2 * num_threads) ? group : 1;

  std::vector<WorkItem> items;
  for (size_t si = 0; si < seqs.size(); ++si) {
    for (int64_t h = 0; h < shape.num_heads; h += heads_per_item) {
      for (int64_t first = 0; first < seqs[si].num_tokens; first += kQueryTile) {
        items.push_back({static_cast<int32_t>(si), static_cast<int32_t>(h),
                         static_cast<int32_t>(heads_per_item), first});
      }
    }
  }
  const int64_t num_items = static_cast<int64_t>(items.size());

  std::atomic<int64_t> next{0};
  ParallelRun(static_cast<int>(std::clamp<int64_t>(num_threads, 1, num_items)), [&](int, int) {
    std::vector<float> scores;
    for (int64_t w = next.fetch_add(1, std::memory_order_relaxed); w < num_items;
         w = next.fetch_add(1, std::memory_order_relaxed)) {
      const WorkItem& item = items[w];
      const AttentionSequence& s = seqs[item.seq];
      const int64_t last = std::min(s.num_tokens, item.first + kQueryTile);
      for (int64_t i = item.first; i < last; ++i) {
        const int64_t row = s.row_offset + i;
        AttendHeads(q + row * row_floats, item.first_head, item.heads, s, s.start_pos + i,
                    item.first_head / group, hd, scale, layer, pool, &scores,
                    out + row * row_floats);
      }
    }
  });
}

}  // namespace spqr::cpu
