#include "engine/backend/cpu/attention.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "engine/backend/cpu/simd.h"

namespace spqr::cpu {

void StoreKv(const float* k, const float* v, std::span<const AttentionSequence> seqs,
             const AttentionShape& shape, int64_t layer, PagedKvPool* pool, int num_threads) {
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

struct WorkItem {
  int32_t seq;
  int32_t head;
  int64_t first;  // first token of the tile within the sequence's chunk
};

// One query row against positions [0, pos]: scores, softmax, weighted sum of values.
void AttendOne(const float* q, const AttentionSequence& s, int64_t pos, int64_t kv_head,
               int64_t head_dim, float scale, int64_t layer, const PagedKvPool& pool,
               std::vector<float>* scores, float* out) {
  const int64_t bs = pool.block_size();
  const int64_t n = pos + 1;
  scores->resize(n);
  float* sc = scores->data();
  float max_score = -INFINITY;
  for (int64_t j = 0; j < n; ++j) {
    const float* key = pool.Slot(s.block_table[j / bs], layer, 0, kv_head, j % bs);
    sc[j] = DotF32(q, key, head_dim) * scale;
    max_score = std::max(max_score, sc[j]);
  }
  float sum = 0.0f;
  for (int64_t j = 0; j < n; ++j) {
    sc[j] = std::exp(sc[j] - max_score);
    sum += sc[j];
  }
  const float inv_sum = 1.0f / sum;
  std::fill(out, out + head_dim, 0.0f);
  for (int64_t j = 0; j < n; ++j) {
    const float* value = pool.Slot(s.block_table[j / bs], layer, 1, kv_head, j % bs);
    const float p = sc[j] * inv_sum;
    for (int64_t d = 0; d < head_dim; ++d) out[d] += p * value[d];
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

  std::vector<WorkItem> items;
  for (size_t si = 0; si < seqs.size(); ++si) {
    for (int64_t h = 0; h < shape.num_heads; ++h) {
      for (int64_t first = 0; first < seqs[si].num_tokens; first += kQueryTile) {
        items.push_back({static_cast<int32_t>(si), static_cast<int32_t>(h), first});
      }
    }
  }
  const int64_t num_items = static_cast<int64_t>(items.size());

#pragma omp parallel num_threads(num_threads)
  {
    std::vector<float> scores;
#pragma omp for schedule(dynamic, 1)
    for (int64_t w = 0; w < num_items; ++w) {
      const WorkItem& item = items[w];
      const AttentionSequence& s = seqs[item.seq];
      const int64_t last = std::min(s.num_tokens, item.first + kQueryTile);
      for (int64_t i = item.first; i < last; ++i) {
        const int64_t row = s.row_offset + i;
        AttendOne(q + row * row_floats + item.head * hd, s, s.start_pos + i, item.head / group, hd,
                  scale, layer, pool, &scores, out + row * row_floats + item.head * hd);
      }
    }
  }
}

}  // namespace spqr::cpu
