#include "engine/kv/block_allocator.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "engine/util/status_macros.h"

namespace spqr {
namespace {

uint64_t Mix64(uint64_t x) {  // splitmix64 finalizer
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

}  // namespace

BlockAllocator::BlockAllocator(int32_t num_blocks, int32_t block_size, bool enable_prefix_cache)
    : block_size_(block_size),
      prefix_cache_enabled_(enable_prefix_cache),
      ref_counts_(num_blocks, 0),
      meta_(num_blocks) {
  free_list_.reserve(num_blocks);
  for (int32_t b = num_blocks - 1; b >= 0; --b) free_list_.push_back(b);
}

BlockAllocatorStats BlockAllocator::stats() const {
  BlockAllocatorStats s;
  s.total_blocks = num_blocks();
  s.free_blocks = num_free_blocks();
  s.used_blocks = s.total_blocks - s.free_blocks;
  for (int32_t rc : ref_counts_) s.shared_blocks += rc > 1 ? 1 : 0;
  s.sequences = static_cast<int32_t>(seqs_.size());
  s.cached_blocks = static_cast<int32_t>(index_.size());
  s.evictable_blocks = static_cast<int32_t>(evictable_.size());
  return s;
}

uint64_t BlockAllocator::ChainHash(uint64_t parent_hash, std::span<const int32_t> tokens) {
  uint64_t h = Mix64(parent_hash);
  for (int32_t t : tokens) h = Mix64(h ^ static_cast<uint32_t>(t));
  return h;
}

void BlockAllocator::Uncache(int32_t block) {
  BlockMeta& m = meta_[block];
  if (!m.cached) return;
  auto it = index_.find(m.hash);
  if (it != index_.end() && it->second == block) index_.erase(it);
  if (m.evictable) {
    evictable_.erase(m.lru);
    m.evictable = false;
  }
  m.cached = false;
  m.tokens.clear();
  m.tokens.shrink_to_fit();
}

absl::StatusOr<std::vector<int32_t>> BlockAllocator::Allocate(int32_t n) {
  if (n < 0) return absl::InvalidArgumentError(absl::StrCat("cannot allocate ", n, " KV blocks"));
  if (n > num_free_blocks()) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "KV cache: ", n, " blocks requested, ", num_free_blocks(), " of ", num_blocks(), " free"));
  }
  std::vector<int32_t> blocks(n);
  for (int32_t i = 0; i < n; ++i) {
    if (!free_list_.empty()) {
      blocks[i] = free_list_.back();
      free_list_.pop_back();
    } else {
      blocks[i] = evictable_.front();  // least recently released cached block
      Uncache(blocks[i]);
    }
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
    BlockMeta& m = meta_[block];
    if (!m.evictable) {
      return absl::FailedPreconditionError(absl::StrCat("KV block ", block, " is free"));
    }
    evictable_.erase(m.lru);  // revived: it has an owner again
    m.evictable = false;
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
  if (--ref_counts_[block] == 0) {
    BlockMeta& m = meta_[block];
    if (m.cached) {
      m.lru = evictable_.insert(evictable_.end(), block);
      m.evictable = true;
    } else {
      free_list_.push_back(block);
    }
  }
  return absl::OkStatus();
}

absl::Status BlockAllocator::Reserve(int64_t seq_id, int64_t num_tokens) {
  std::vector<int32_t>& table = seqs_[seq_id].table;
  const int32_t needed =
      BlocksForTokens(num_tokens, block_size_) - static_cast<int32_t>(table.size());
  if (needed <= 0) return absl::OkStatus();
  auto blocks = Allocate(needed);
  if (!blocks.ok()) {
    if (table.empty()) seqs_.erase(seq_id);
    return blocks.status();
  }
  table.insert(table.end(), blocks->begin(), blocks->end());
  return absl::OkStatus();
}

absl::Status BlockAllocator::AppendShared(int64_t seq_id, const std::vector<int32_t>& blocks) {
  for (size_t i = 0; i < blocks.size(); ++i) {
    absl::Status s = AddRef(blocks[i]);
    if (!s.ok()) {
      for (size_t j = i; j-- > 0;) (void)Release(blocks[j]);  // undo: all or nothing
      return s;
    }
  }
  std::vector<int32_t>& table = seqs_[seq_id].table;
  table.insert(table.end(), blocks.begin(), blocks.end());
  return absl::OkStatus();
}

const std::vector<int32_t>& BlockAllocator::BlockTable(int64_t seq_id) const {
  static const std::vector<int32_t> kEmpty;
  auto it = seqs_.find(seq_id);
  return it == seqs_.end() ? kEmpty : it->second.table;
}

absl::Status BlockAllocator::FreeSequence(int64_t seq_id) {
  auto it = seqs_.find(seq_id);
  if (it == seqs_.end()) {
    return absl::NotFoundError(absl::StrCat("KV cache: sequence ", seq_id, " has no blocks"));
  }
  std::vector<int32_t> table = std::move(it->second.table);
  seqs_.erase(it);
  absl::Status first_error;
  // Last to first: a cached prefix's tail becomes evictable before its head, so LRU eviction
  // trims prefixes from the end and the head (shared by more prompts) stays longest.
  for (auto b = table.rbegin(); b != table.rend(); ++b) {
    absl::Status s = Release(*b);
    if (!s.ok() && first_error.ok()) first_error = s;
  }
  return first_error;
}

PrefixMatch BlockAllocator::MatchPrefix(std::span<const int32_t> tokens, int32_t max_blocks) const {
  PrefixMatch match;
  if (!prefix_cache_enabled_) return match;
  max_blocks = std::min<int64_t>(max_blocks, static_cast<int64_t>(tokens.size()) / block_size_);
  uint64_t hash = kRootHash, entry = 0;
  for (int32_t i = 0; i < max_blocks; ++i) {
    const std::span<const int32_t> block_tokens = tokens.subspan(i * block_size_, block_size_);
    hash = ChainHash(hash, block_tokens);
    auto it = index_.find(hash);
    if (it == index_.end()) break;
    const BlockMeta& m = meta_[it->second];
    // Exact prefix only: same parent entry and same tokens (a hash collision stops here).
    if (m.parent_entry != entry ||
        !std::equal(m.tokens.begin(), m.tokens.end(), block_tokens.begin(), block_tokens.end())) {
      break;
    }
    match.blocks.push_back(it->second);
    if (ref_counts_[it->second] == 0) ++match.evictable;
    entry = m.entry;
  }
  return match;
}

absl::Status BlockAllocator::AcquirePrefix(int64_t seq_id, const PrefixMatch& match) {
  if (match.blocks.empty()) return absl::OkStatus();
  if (!BlockTable(seq_id).empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "KV cache: sequence ", seq_id, " already has blocks; a cached prefix must come first"));
  }
  for (int32_t b : match.blocks) {
    if (b < 0 || b >= num_blocks() || !meta_[b].cached) {
      return absl::FailedPreconditionError(
          absl::StrCat("KV cache: block ", b, " of the matched prefix is no longer cached"));
    }
  }
  RETURN_IF_ERROR(AppendShared(seq_id, match.blocks));
  SequenceState& state = seqs_[seq_id];
  const BlockMeta& last = meta_[match.blocks.back()];
  state.cached_blocks = static_cast<int32_t>(match.blocks.size());
  state.chain_hash = last.hash;
  state.chain_entry = last.entry;
  return absl::OkStatus();
}

int32_t BlockAllocator::CacheFullBlocks(int64_t seq_id, std::span<const int32_t> tokens,
                                        int64_t num_written) {
  if (!prefix_cache_enabled_) return 0;
  auto it = seqs_.find(seq_id);
  if (it == seqs_.end()) return 0;
  SequenceState& state = it->second;
  const int64_t known = std::min<int64_t>(num_written, static_cast<int64_t>(tokens.size()));
  const int32_t full =
      std::min(static_cast<int32_t>(known / block_size_), static_cast<int32_t>(state.table.size()));
  int32_t registered = 0;
  for (int32_t i = state.cached_blocks; i < full; ++i) {
    const std::span<const int32_t> block_tokens = tokens.subspan(i * block_size_, block_size_);
    const uint64_t hash = ChainHash(state.chain_hash, block_tokens);
    auto found = index_.find(hash);
    if (found != index_.end()) {
      const BlockMeta& other = meta_[found->second];
      if (other.parent_entry == state.chain_entry &&
          std::equal(other.tokens.begin(), other.tokens.end(), block_tokens.begin(),
                     block_tokens.end())) {
        // Same prefix already cached in another block (two sequences prefilled it at once):
        // ours stays private; later blocks chain onto the cached one.
        state.chain_hash = hash;
        state.chain_entry = other.entry;
        state.cached_blocks = i + 1;
        continue;
      }
      // A different prefix under the same hash: a collision, or a stale entry whose parent was
      // evicted (unreachable by lookups). Either way the newer block takes the key.
      const int32_t stale = found->second;
      Uncache(stale);
      if (ref_counts_[stale] == 0) free_list_.push_back(stale);
    }
    const int32_t block = state.table[i];
    BlockMeta& m = meta_[block];
    m.cached = true;
    m.hash = hash;
    m.entry = next_entry_++;
    m.parent_entry = state.chain_entry;
    m.tokens.assign(block_tokens.begin(), block_tokens.end());
    index_.emplace(hash, block);
    state.chain_hash = hash;
    state.chain_entry = m.entry;
    state.cached_blocks = i + 1;
    ++registered;
  }
  return registered;
}

}  // namespace spqr
