// Host-side bookkeeping of the paged KV pool: which physical blocks are free, how many owners
// each used block has (reference counts, so that the prefix cache can share full blocks between
// sequences), each sequence's block table, and the prefix cache itself. The backend owns the pool
// memory; nothing here touches it.
//
// Prefix cache (when enabled): a FULL block whose keys/values have been written is registered
// under a hash chain, hash(parent block's hash, the block's tokens), so the key identifies the
// whole token prefix up to the block's end. A later sequence whose prompt starts with the same
// tokens takes references on those blocks instead of recomputing them. Lookups also compare the
// block's tokens and the identity of its parent entry, so a hash collision can never hand out
// wrong keys/values: only an exact prefix matches (on a collision the newer block takes the key). A
// cached block whose last owner leaves is not freed but parked in an LRU list; it still counts as
// free (reclaimable), and Allocate evicts the least recently released ones when no truly free block
// is left. Sequences release their blocks last-to-first, so a prefix's tail is evicted before its
// head.
//
// Not thread-safe: the engine thread owns the allocator.
#pragma once

#include <cstdint>
#include <list>
#include <span>
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
  int32_t free_blocks = 0;       // allocatable: never-used/free blocks plus evictable ones
  int32_t used_blocks = 0;       // blocks with at least one owner
  int32_t shared_blocks = 0;     // blocks with more than one owner
  int32_t sequences = 0;         // sequences with a block table
  int32_t cached_blocks = 0;     // blocks registered in the prefix cache (owned or not)
  int32_t evictable_blocks = 0;  // of free_blocks: cached blocks nobody owns (LRU)
  double usage() const { return total_blocks == 0 ? 0.0 : double(used_blocks) / total_blocks; }
};

// The cached prefix of a token sequence found by MatchPrefix.
struct PrefixMatch {
  std::vector<int32_t> blocks;  // physical blocks holding tokens [0, blocks.size() * block_size)
  int32_t evictable = 0;        // of them, blocks nobody owns now (counted as free)
};

class BlockAllocator {
 public:
  BlockAllocator(int32_t num_blocks, int32_t block_size, bool enable_prefix_cache = false);

  int32_t num_blocks() const { return static_cast<int32_t>(ref_counts_.size()); }
  int32_t block_size() const { return block_size_; }
  bool prefix_cache_enabled() const { return prefix_cache_enabled_; }
  // Blocks Allocate can hand out: free ones plus cached blocks nobody owns (evicted on demand).
  int32_t num_free_blocks() const {
    return static_cast<int32_t>(free_list_.size() + evictable_.size());
  }
  // Cached blocks nobody owns (part of num_free_blocks).
  int32_t num_evictable_blocks() const { return static_cast<int32_t>(evictable_.size()); }
  BlockAllocatorStats stats() const;

  // --- Physical blocks ---------------------------------------------------------------------
  // Takes `n` blocks (all or none), each with reference count 1: free ones first, then the least
  // recently released evictable cached blocks (dropping them from the cache). RESOURCE_EXHAUSTED
  // when fewer than `n` are available.
  absl::StatusOr<std::vector<int32_t>> Allocate(int32_t n);
  // Adds an owner to a used block, or revives an evictable cached block (prefix sharing).
  // FAILED_PRECONDITION for a free, uncached block.
  absl::Status AddRef(int32_t block);
  // Drops one owner; with none left the block returns to the free list, or, when it is cached,
  // to the evictable LRU list. FAILED_PRECONDITION for a block nobody owns (double free),
  // OUT_OF_RANGE for an id outside the pool.
  absl::Status Release(int32_t block);
  int32_t ref_count(int32_t block) const { return ref_counts_[block]; }
  bool is_cached(int32_t block) const { return meta_[block].cached; }

  // --- Sequences ---------------------------------------------------------------------------
  // Grows `seq_id`'s block table (creating it if needed) until it covers `num_tokens` slots.
  // All or nothing: RESOURCE_EXHAUSTED leaves the table unchanged.
  absl::Status Reserve(int64_t seq_id, int64_t num_tokens);
  // Appends blocks someone else owns (a shared prefix) to the table, taking a reference on each.
  absl::Status AppendShared(int64_t seq_id, const std::vector<int32_t>& blocks);
  // The block table of `seq_id` (empty when unknown).
  const std::vector<int32_t>& BlockTable(int64_t seq_id) const;
  // Releases every block of the sequence (last to first) and forgets it. NOT_FOUND for an
  // unknown sequence.
  absl::Status FreeSequence(int64_t seq_id);
  bool HasSequence(int64_t seq_id) const { return seqs_.count(seq_id) != 0; }

  // --- Prefix cache (no-ops that find nothing when disabled) -----------------------------------
  // The longest chain of cached blocks holding exactly tokens[0, k * block_size), k <= max_blocks.
  // Takes no reference: call AcquirePrefix before anything else allocates.
  PrefixMatch MatchPrefix(std::span<const int32_t> tokens, int32_t max_blocks) const;
  // Starts `seq_id`'s table with `match.blocks` (a MatchPrefix result, still cached), taking a
  // reference on each. FAILED_PRECONDITION when the sequence already has blocks or a block is no
  // longer cached; nothing changes then.
  absl::Status AcquirePrefix(int64_t seq_id, const PrefixMatch& match);
  // Registers the sequence's full blocks whose keys/values are written: `tokens` are its tokens
  // and the first `num_written` of them are in the cache. Blocks already registered (or reused)
  // are skipped; a block whose prefix another block already caches stays private. Returns the
  // number of blocks newly registered.
  int32_t CacheFullBlocks(int64_t seq_id, std::span<const int32_t> tokens, int64_t num_written);

 private:
  static constexpr uint64_t kRootHash = 0x6a09e667f3bcc908ull;  // hash of the empty prefix
  struct BlockMeta {
    bool cached = false;
    uint64_t hash = 0;            // hash chain key (prefix up to this block's end)
    uint64_t entry = 0;           // unique serial of this cache entry
    uint64_t parent_entry = 0;    // serial of the entry holding the previous block (0: first)
    std::vector<int32_t> tokens;  // the block's tokens, compared on lookup
    bool evictable = false;       // in evictable_ (cached, no owner)
    std::list<int32_t>::iterator lru;
  };
  struct SequenceState {
    std::vector<int32_t> table;
    int32_t cached_blocks = 0;        // leading blocks registered (or found) in the cache
    uint64_t chain_hash = kRootHash;  // hash of the cached prefix so far
    uint64_t chain_entry = 0;         // entry serial of the cached prefix's last block
  };

  static uint64_t ChainHash(uint64_t parent_hash, std::span<const int32_t> tokens);
  void Uncache(int32_t block);

  int32_t block_size_;
  bool prefix_cache_enabled_;
  std::vector<int32_t> ref_counts_;  // 0 = free or evictable
  std::vector<int32_t> free_list_;   // stack; lowest ids are handed out first
  std::vector<BlockMeta> meta_;
  std::list<int32_t> evictable_;  // cached blocks with no owner, least recently released first
  std::unordered_map<uint64_t, int32_t> index_;  // chain hash -> cached block
  uint64_t next_entry_ = 1;
  std::unordered_map<int64_t, SequenceState> seqs_;
};

}  // namespace spqr
