#include "engine/kv/block_allocator.h"

#include "absl/strings/str_cat.h"
#include "engine/util/status_macros.h"

namespace spqr {

BlockAllocator::BlockAllocator(int32_t num_blocks, int32_t block_size)
    : block_size_(block_size), ref_counts_(num_blocks, 0) {
  free_list_.reserve(num_blocks);
  for (int32_t b = num_blocks - 1; b >= 0; --b) free_list_.push_back(b);
}

BlockAllocatorStats BlockAllocator::stats() const {
  BlockAllocatorStats s;
  s.total_blocks = num_blocks();
  s.free_blocks = num_free_blocks();
  s.used_blocks = s.total_blocks - s.free_blocks;
  for (int32_t rc : ref_counts_) s.shared_blocks += rc > 1 ? 1 : 0;
  s.sequences = static_cast<int32_t>(tables_.size());
  return s;
}

absl::StatusOr<std::vector<int32_t>> BlockAllocator::Allocate(int32_t n) {
  if (n < 0) return absl::InvalidArgumentError(absl::StrCat("cannot allocate ", n, " KV blocks"));
  if (n > num_free_blocks()) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "KV cache: ", n, " blocks requested, ", num_free_blocks(), " of ", num_blocks(), " free"));
  }
  std::vector<int32_t> blocks(n);
  for (int32_t i = 0; i < n; ++i) {
    blocks[i] = free_list_.back();
    free_list_.pop_back();
    ref_counts_[blocks[i]] = 1;
  }
  return blocks;
}

absl::Status BlockAllocator::AddRef(int32_t block) {
  if (block < 0 || block >= num_blocks()) {
    return absl::OutOfRangeError(
        absl::StrCat("KV block ", block, " is outside the pool of ", num_blocks()));
  }
  if (ref_counts_[block] == 0) {
    return absl::FailedPreconditionError(absl::StrCat("KV block ", block, " is free"));
  }
  ++ref_counts_[block];
  return absl::OkStatus();
}

absl::Status BlockAllocator::Release(int32_t block) {
  if (block < 0 || block >= num_blocks()) {
    return absl::OutOfRangeError(
        absl::StrCat("KV block ", block, " is outside the pool of ", num_blocks()));
  }
  if (ref_counts_[block] == 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("KV block ", block, " released twice (it is already free)"));
  }
  if (--ref_counts_[block] == 0) free_list_.push_back(block);
  return absl::OkStatus();
}

absl::Status BlockAllocator::Reserve(int64_t seq_id, int64_t num_tokens) {
  std::vector<int32_t>& table = tables_[seq_id];
  const int32_t needed =
      BlocksForTokens(num_tokens, block_size_) - static_cast<int32_t>(table.size());
  if (needed <= 0) return absl::OkStatus();
  auto blocks = Allocate(needed);
  if (!blocks.ok()) {
    if (table.empty()) tables_.erase(seq_id);
    return blocks.status();
  }
  table.insert(table.end(), blocks->begin(), blocks->end());
  return absl::OkStatus();
}

absl::Status BlockAllocator::AppendShared(int64_t seq_id, const std::vector<int32_t>& blocks) {
  for (size_t i = 0; i < blocks.size(); ++i) {
    absl::Status s = AddRef(blocks[i]);
    if (!s.ok()) {
      for (size_t j = 0; j < i; ++j) (void)Release(blocks[j]);  // undo: all or nothing
      return s;
    }
  }
  std::vector<int32_t>& table = tables_[seq_id];
  table.insert(table.end(), blocks.begin(), blocks.end());
  return absl::OkStatus();
}

const std::vector<int32_t>& BlockAllocator::BlockTable(int64_t seq_id) const {
  static const std::vector<int32_t> kEmpty;
  auto it = tables_.find(seq_id);
  return it == tables_.end() ? kEmpty : it->second;
}

absl::Status BlockAllocator::FreeSequence(int64_t seq_id) {
  auto it = tables_.find(seq_id);
  if (it == tables_.end()) {
    return absl::NotFoundError(absl::StrCat("KV cache: sequence ", seq_id, " has no blocks"));
  }
  std::vector<int32_t> table = std::move(it->second);
  tables_.erase(it);
  absl::Status first_error;
  for (int32_t b : table) {
    absl::Status s = Release(b);
    if (!s.ok() && first_error.ok()) first_error = s;
  }
  return first_error;
}

}  // namespace spqr
