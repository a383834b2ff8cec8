// Host-side bookkeeping of the paged KV pool: which physical blocks are free, how many owners
// each used block has (reference counts, so that a later prefix cache can share full blocks
// between sequences), and each sequence's block table. The backend owns the pool memory itself;
// nothing here touches it.
//
// Not thread-safe: the engine thread owns the allocator.
#pragma once

#include <cstdint>
#include <unordered_map>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace spqr {

// Blocks needed to hold `num_tokens` token slots.
inline int32_t BlocksForTokens(int64_t num_tokens, int32_t block_size) {
  return static_cast<int32_t>((num_tokens + block_size - 1) / block_size);
}

struct BlockAllocatorStats {
  int32_t total_blocks = 0;
  int32_t free_blocks = 0;
  int32_t used_blocks = 0;    // blocks with at least one owner
  int32_t shared_blocks = 0;  // blocks with more than one owner
  int32_t sequences = 0;      // sequences with a block table
  double usage() const { return total_blocks == 0 ? 0.0 : double(used_blocks) / total_blocks; }
};

class BlockAllocator {
 public:
  BlockAllocator(int32_t num_blocks, int32_t block_size);

  int32_t num_blocks() const { return static_cast<int32_t>(ref_counts_.size()); }
  int32_t block_size() const { return block_size_; }
  int32_t num_free_blocks() const { return static_cast<int32_t>(free_list_.size()); }
  BlockAllocatorStats stats() const;

  // --- Physical blocks ---------------------------------------------------------------------
  // Takes `n` free blocks (all or none), each with reference count 1. RESOURCE_EXHAUSTED when
  // fewer than `n` are free.
  absl::StatusOr<std::vector<int32_t>> Allocate(int32_t n);
  // Adds an owner to a used block (prefix sharing). FAILED_PRECONDITION for a free block.
  absl::Status AddRef(int32_t block);
  // Drops one owner; the block returns to the free list when none is left. FAILED_PRECONDITION
  // for a block that is already free (double free), OUT_OF_RANGE for an id outside the pool.
  absl::Status Release(int32_t block);
  int32_t ref_count(int32_t block) const { return ref_counts_[block]; }

  // --- Sequences ---------------------------------------------------------------------------
  // Grows `seq_id`'s block table (creating it if needed) until it covers `num_tokens` slots.
  // All or nothing: RESOURCE_EXHAUSTED leaves the table unchanged.
  absl::Status Reserve(int64_t seq_id, int64_t num_tokens);
  // Appends blocks someone else owns (a shared prefix) to the table, taking a reference on each.
  absl::Status AppendShared(int64_t seq_id, const std::vector<int32_t>& blocks);
  // The block table of `seq_id` (empty when unknown).
  const std::vector<int32_t>& BlockTable(int64_t seq_id) const;
  // Releases every block of the sequence and forgets it. NOT_FOUND for an unknown sequence.
  absl::Status FreeSequence(int64_t seq_id);
  bool HasSequence(int64_t seq_id) const { return tables_.count(seq_id) != 0; }

 private:
  int32_t block_size_;
  std::vector<int32_t> ref_counts_;  // 0 = free
  std::vector<int32_t> free_list_;   // stack; lowest ids are handed out first
  std::unordered_map<int64_t, std::vector<int32_t>> tables_;
};

}  // namespace spqr
