// The CPU backend's paged KV pool: fp32 keys and values in host memory.
//
// Layout: [block][layer][k|v][kv_head][slot][head_dim]. Each (block, layer, k|v, head) plane is
// block_size * head_dim contiguous floats, so attention walks a block's keys for one head with
// unit stride.
#pragma once

#include <cstdint>
#include <vector>

namespace spqr::cpu {

class PagedKvPool {
 public:
  PagedKvPool() = default;
  PagedKvPool(int64_t num_layers, int64_t kv_heads, int64_t head_dim, int64_t num_blocks,
              int64_t block_size)
      : num_layers_(num_layers),
        kv_heads_(kv_heads),
        head_dim_(head_dim),
        num_blocks_(num_blocks),
        block_size_(block_size),
        data_(static_cast<size_t>(num_blocks * BlockFloats()), 0.0f) {}

  // Floats one token slot takes: all layers, K and V.
  static int64_t FloatsPerToken(int64_t num_layers, int64_t kv_heads, int64_t head_dim) {
    return num_layers * 2 * kv_heads * head_dim;
  }

  int64_t num_blocks() const { return num_blocks_; }
  int64_t block_size() const { return block_size_; }
  int64_t bytes() const { return static_cast<int64_t>(data_.size() * sizeof(float)); }

  // The key (kv = 0) or value (kv = 1) vector of `slot` in `block`, layer and head.
  float* Slot(int64_t block, int64_t layer, int kv, int64_t head, int64_t slot) {
    return data_.data() + Offset(block, layer, kv, head, slot);
  }
  const float* Slot(int64_t block, int64_t layer, int kv, int64_t head, int64_t slot) const {
    return data_.data() + Offset(block, layer, kv, head, slot);
  }

 private:
  int64_t BlockFloats() const {
    return block_size_ * FloatsPerToken(num_layers_, kv_heads_, head_dim_);
  }
  int64_t Offset(int64_t block, int64_t layer, int kv, int64_t head, int64_t slot) const {
    return (((block * num_layers_ + layer) * 2 + kv) * kv_heads_ + head) * block_size_ * head_dim_ +
           slot * head_dim_;
  }

  int64_t num_layers_ = 0;
  int64_t kv_heads_ = 0;
  int64_t head_dim_ = 0;
  int64_t num_blocks_ = 0;
  int64_t block_size_ = 0;
  std::vector<float> data_;
};

}  // namespace spqr::cpu
