#include "engine/kv/block_allocator.h"

#include <map>
#include <random>
#include <set>
#include <vector>

#include "gtest/gtest.h"

namespace spqr {
namespace {

TEST(BlockAllocatorTest, BlocksForTokensRoundsUp) {
  EXPECT_EQ(BlocksForTokens(0, 16), 0);
  EXPECT_EQ(BlocksForTokens(1, 16), 1);
  EXPECT_EQ(BlocksForTokens(16, 16), 1);
  EXPECT_EQ(BlocksForTokens(17, 16), 2);
}

TEST(BlockAllocatorTest, AllocateIsAllOrNothing) {
  BlockAllocator a(4, 16);
  auto three = a.Allocate(3);
  ASSERT_TRUE(three.ok());
  EXPECT_EQ(*three, (std::vector<int32_t>{0, 1, 2}));
  auto two = a.Allocate(2);
  EXPECT_EQ(two.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(a.num_free_blocks(), 1);
  for (int32_t b : *three) ASSERT_TRUE(a.Release(b).ok());
  EXPECT_EQ(a.num_free_blocks(), 4);
}

TEST(BlockAllocatorTest, DoubleFreeAndBadIdsAreErrors) {
  BlockAllocator a(2, 16);
  auto b = a.Allocate(1);
  ASSERT_TRUE(b.ok());
  ASSERT_TRUE(a.Release((*b)[0]).ok());
  EXPECT_EQ(a.Release((*b)[0]).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(a.Release(7).code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(a.AddRef(1).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(a.num_free_blocks(), 2);
}

TEST(BlockAllocatorTest, SequencesGrowAndFree) {
  BlockAllocator a(8, 4);
  ASSERT_TRUE(a.Reserve(10, 5).ok());  // 2 blocks
  EXPECT_EQ(a.BlockTable(10).size(), 2u);
  ASSERT_TRUE(a.Reserve(10, 8).ok());  // still 2
  EXPECT_EQ(a.BlockTable(10).size(), 2u);
  ASSERT_TRUE(a.Reserve(10, 9).ok());  // 3
  EXPECT_EQ(a.BlockTable(10).size(), 3u);
  EXPECT_EQ(a.Reserve(11, 100).code(), absl::StatusCode::kResourceExhausted);
  EXPECT_FALSE(a.HasSequence(11)) << "a failed reservation leaves no table behind";
  EXPECT_EQ(a.stats().used_blocks, 3);
  EXPECT_EQ(a.stats().sequences, 1);
  ASSERT_TRUE(a.FreeSequence(10).ok());
  EXPECT_EQ(a.FreeSequence(10).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(a.num_free_blocks(), 8);
}

TEST(BlockAllocatorTest, SharedBlocksReturnWhenTheLastOwnerLeaves) {
  BlockAllocator a(4, 4);
  ASSERT_TRUE(a.Reserve(1, 8).ok());
  const std::vector<int32_t> prefix = a.BlockTable(1);
  ASSERT_TRUE(a.AppendShared(2, prefix).ok());
  ASSERT_TRUE(a.Reserve(2, 12).ok());  // one private block after the shared prefix
  EXPECT_EQ(a.stats().shared_blocks, 2);
  EXPECT_EQ(a.stats().used_blocks, 3);
  ASSERT_TRUE(a.FreeSequence(1).ok());
  EXPECT_EQ(a.stats().used_blocks, 3) << "sequence 2 still owns the prefix";
  ASSERT_TRUE(a.FreeSequence(2).ok());
  EXPECT_EQ(a.num_free_blocks(), 4);
}

// Randomized alloc / grow / share / free against a reference model of who owns what.
TEST(BlockAllocatorTest, RandomizedInvariants) {
  constexpr int32_t kBlocks = 64, kBlockSize = 4;
  BlockAllocator a(kBlocks, kBlockSize);
  std::mt19937 rng(12345);
  std::map<int64_t, int64_t> tokens;  // live sequence -> tokens reserved
  int64_t next_seq = 0;
  for (int iter = 0; iter < 5000; ++iter) {
    const int op = rng() % 4;
    if (op == 0 || tokens.empty()) {
      const int64_t n = 1 + rng() % 40;
      const int64_t id = next_seq++;
      const bool fits = BlocksForTokens(n, kBlockSize) <= a.num_free_blocks();
      EXPECT_EQ(a.Reserve(id, n).ok(), fits);
      if (fits) tokens[id] = n;
    } else if (op == 1) {
      auto it = std::next(tokens.begin(), rng() % tokens.size());
      const int64_t n = it->second + rng() % 10;
      const int32_t extra =
          BlocksForTokens(n, kBlockSize) - BlocksForTokens(it->second, kBlockSize);
      const bool fits = extra <= a.num_free_blocks();
      EXPECT_EQ(a.Reserve(it->first, n).ok(), fits);
      if (fits) it->second = n;
    } else if (op == 2) {
      // Share a random sequence's full prefix into a new sequence.
      auto it = std::next(tokens.begin(), rng() % tokens.size());
      const std::vector<int32_t> prefix = a.BlockTable(it->first);
      const int64_t id = next_seq++;
      ASSERT_TRUE(a.AppendShared(id, prefix).ok());
      tokens[id] = static_cast<int64_t>(prefix.size()) * kBlockSize;
    } else {
      auto it = std::next(tokens.begin(), rng() % tokens.size());
      ASSERT_TRUE(a.FreeSequence(it->first).ok());
      tokens.erase(it);
    }
    // Invariants: every table covers its tokens; ref counts equal the number of tables holding
    // the block; free + used = total; no block is both free and owned.
    std::map<int32_t, int32_t> owners;
    for (const auto& [id, n] : tokens) {
      const auto& table = a.BlockTable(id);
      ASSERT_EQ(static_cast<int32_t>(table.size()), BlocksForTokens(n, kBlockSize));
      for (int32_t b : table) ++owners[b];
    }
    int32_t used = 0;
    for (int32_t b = 0; b < kBlocks; ++b) {
      const auto it = owners.find(b);
      ASSERT_EQ(a.ref_count(b), it == owners.end() ? 0 : it->second) << "block " << b;
      used += a.ref_count(b) > 0 ? 1 : 0;
    }
    ASSERT_EQ(used + a.num_free_blocks(), kBlocks);
  }
  for (const auto& [id, n] : tokens) ASSERT_TRUE(a.FreeSequence(id).ok());
  EXPECT_EQ(a.num_free_blocks(), kBlocks);
  EXPECT_EQ(a.stats().used_blocks, 0);
  EXPECT_EQ(a.stats().sequences, 0);
  // Every block can be handed out again exactly once.
  auto all = a.Allocate(kBlocks);
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(std::set<int32_t>(all->begin(), all->end()).size(), static_cast<size_t>(kBlocks));
}

// --- Prefix cache -------------------------------------------------------------------------------

std::vector<int32_t> Range(int32_t first, int32_t n) {
  std::vector<int32_t> v(n);
  for (int32_t i = 0; i < n; ++i) v[i] = first + i;
  return v;
}

TEST(PrefixCacheTest, MatchesOnlyExactWrittenFullBlockPrefixes) {
  BlockAllocator a(8, 4, /*enable_prefix_cache=*/true);
  const std::vector<int32_t> tokens = Range(100, 12);
  ASSERT_TRUE(a.Reserve(1, 12).ok());
  EXPECT_EQ(a.CacheFullBlocks(1, tokens, 3), 0) << "no full block written yet";
  EXPECT_TRUE(a.MatchPrefix(tokens, 3).blocks.empty());
  EXPECT_EQ(a.CacheFullBlocks(1, tokens, 10), 2) << "two full blocks written";
  EXPECT_EQ(a.CacheFullBlocks(1, tokens, 10), 0) << "registered once";
  const std::vector<int32_t>& table = a.BlockTable(1);
  EXPECT_EQ(a.MatchPrefix(tokens, 3).blocks, (std::vector<int32_t>{table[0], table[1]}));
  EXPECT_EQ(a.MatchPrefix(tokens, 1).blocks, (std::vector<int32_t>{table[0]})) << "max_blocks";
  EXPECT_EQ(a.MatchPrefix(std::span<const int32_t>(tokens).first(7), 3).blocks.size(), 1u)
      << "only full blocks of the query match";
  std::vector<int32_t> other = tokens;
  other[5] = 7;  // second block differs
  EXPECT_EQ(a.MatchPrefix(other, 3).blocks.size(), 1u);
  other[0] = 7;  // first block differs: nothing after it can match either
  EXPECT_TRUE(a.MatchPrefix(other, 3).blocks.empty());
  EXPECT_EQ(a.MatchPrefix(tokens, 3).evictable, 0) << "owned by sequence 1";
  EXPECT_EQ(a.stats().cached_blocks, 2);

  BlockAllocator off(8, 4);
  ASSERT_TRUE(off.Reserve(1, 12).ok());
  EXPECT_EQ(off.CacheFullBlocks(1, tokens, 12), 0);
  EXPECT_TRUE(off.MatchPrefix(tokens, 3).blocks.empty());
}

TEST(PrefixCacheTest, SharedBlocksOutliveTheirSequenceAndEvictLeastRecentTailFirst) {
  BlockAllocator a(4, 4, true);
  const std::vector<int32_t> tokens = Range(10, 8);
  ASSERT_TRUE(a.Reserve(1, 8).ok());
  ASSERT_EQ(a.CacheFullBlocks(1, tokens, 8), 2);
  const std::vector<int32_t> prefix = a.BlockTable(1);
  // A second sequence shares the cached prefix and grows past it.
  const PrefixMatch match = a.MatchPrefix(tokens, 2);
  ASSERT_EQ(match.blocks, prefix);
  ASSERT_TRUE(a.AcquirePrefix(2, match).ok());
  ASSERT_TRUE(a.Reserve(2, 12).ok());
  EXPECT_EQ(a.ref_count(prefix[0]), 2);
  EXPECT_EQ(a.AcquirePrefix(2, match).code(), absl::StatusCode::kFailedPrecondition)
      << "a cached prefix must start the table";
  ASSERT_TRUE(a.FreeSequence(1).ok());
  ASSERT_TRUE(a.FreeSequence(2).ok());
  // Nobody owns the prefix any more: it is free (reclaimable) but still cached.
  EXPECT_EQ(a.num_free_blocks(), 4);
  EXPECT_EQ(a.stats().used_blocks, 0);
  EXPECT_EQ(a.stats().evictable_blocks, 2);
  const PrefixMatch again = a.MatchPrefix(tokens, 2);
  EXPECT_EQ(again.blocks, prefix);
  EXPECT_EQ(again.evictable, 2);
  // Two truly free blocks plus one eviction: the prefix's tail goes first, its head stays.
  auto three = a.Allocate(3);
  ASSERT_TRUE(three.ok());
  EXPECT_EQ(a.MatchPrefix(tokens, 2).blocks, (std::vector<int32_t>{prefix[0]}));
  EXPECT_FALSE(a.is_cached(prefix[1]));
  // Reviving the evictable head takes it out of the free count.
  ASSERT_TRUE(a.AcquirePrefix(3, a.MatchPrefix(tokens, 2)).ok());
  EXPECT_EQ(a.num_free_blocks(), 0);
  EXPECT_EQ(a.Allocate(1).status().code(), absl::StatusCode::kResourceExhausted);
  for (int32_t b : *three) ASSERT_TRUE(a.Release(b).ok());
  ASSERT_TRUE(a.FreeSequence(3).ok());
  EXPECT_EQ(a.num_free_blocks(), 4);
  EXPECT_EQ(a.Release(prefix[0]).code(), absl::StatusCode::kFailedPrecondition)
      << "an evictable cached block has no owner to release";
}

TEST(PrefixCacheTest, DuplicatePrefixStaysPrivateAndLaterBlocksChainOn) {
  BlockAllocator a(8, 4, true);
  const std::vector<int32_t> tokens = Range(50, 12);
  // Two sequences prefill the same prompt at once: only the first registration wins.
  ASSERT_TRUE(a.Reserve(1, 12).ok());
  ASSERT_TRUE(a.Reserve(2, 12).ok());
  EXPECT_EQ(a.CacheFullBlocks(1, tokens, 8), 2);
  EXPECT_EQ(a.CacheFullBlocks(2, tokens, 12), 1) << "blocks 0-1 duplicate, block 2 is new";
  const PrefixMatch match = a.MatchPrefix(tokens, 3);
  ASSERT_EQ(match.blocks.size(), 3u);
  EXPECT_EQ(match.blocks[0], a.BlockTable(1)[0]);
  EXPECT_EQ(match.blocks[2], a.BlockTable(2)[2]);
  ASSERT_TRUE(a.FreeSequence(1).ok());
  ASSERT_TRUE(a.FreeSequence(2).ok());
  EXPECT_EQ(a.stats().evictable_blocks, 3);
  EXPECT_EQ(a.num_free_blocks(), 8);
}

// Randomized admissions with prefix reuse against a model of the pool's contents: each block
// slot holds the token written there; a sequence only ever writes into blocks it owns alone, and
// every prefix it reuses holds exactly its prompt's tokens.
TEST(PrefixCacheTest, RandomizedSharingInvariants) {
  constexpr int32_t kBlocks = 48, kBlockSize = 4;
  BlockAllocator a(kBlocks, kBlockSize, true);
  std::mt19937 rng(777);
  std::vector<int32_t> content(kBlocks * kBlockSize, -1);
  struct Live {
    std::vector<int32_t> tokens;  // prompt, grown by "generated" tokens
    int64_t written = 0;
  };
  std::map<int64_t, Live> live;
  int64_t next_seq = 0, hits = 0;
  // Prompts drawn from a few stems so that prefixes repeat.
  auto make_prompt = [&] {
    const int stem = rng() % 3;
    std::vector<int32_t> p;
    const int n = 1 + rng() % 24;
    for (int i = 0; i < n; ++i) {
      p.push_back(i < 12 && rng() % 8 != 0 ? stem * 1000 + i : static_cast<int32_t>(rng() % 50));
    }
    return p;
  };
  for (int iter = 0; iter < 4000; ++iter) {
    const int op = rng() % 4;
    if (op == 0 || live.empty()) {
      Live seq;
      seq.tokens = make_prompt();
      const int64_t max_new = rng() % 8;
      const int64_t id = next_seq++;
      const PrefixMatch match =
          a.MatchPrefix(seq.tokens, (static_cast<int32_t>(seq.tokens.size()) - 1) / kBlockSize);
      const int32_t need = BlocksForTokens(seq.tokens.size() + max_new, kBlockSize) -
                           static_cast<int32_t>(match.blocks.size()) + match.evictable;
      if (need > a.num_free_blocks()) continue;  // the scheduler would not admit it
      ASSERT_TRUE(a.AcquirePrefix(id, match).ok());
      ASSERT_TRUE(a.Reserve(id, seq.tokens.size() + max_new).ok()) << "reservation must fit";
      for (size_t b = 0; b < match.blocks.size(); ++b) {
        for (int32_t k = 0; k < kBlockSize; ++k) {
          ASSERT_EQ(content[match.blocks[b] * kBlockSize + k], seq.tokens[b * kBlockSize + k])
              << "reused block " << match.blocks[b] << " holds other tokens";
        }
      }
      hits += static_cast<int64_t>(match.blocks.size());
      seq.written = static_cast<int64_t>(match.blocks.size()) * kBlockSize;
      seq.tokens.resize(seq.tokens.size() + max_new, -2);  // not generated yet
      live[id] = seq;
    } else if (op == 1 || op == 2) {
      // Write (prefill or decode) a few more tokens of a random sequence, then cache its blocks.
      auto it = std::next(live.begin(), rng() % live.size());
      Live& seq = it->second;
      const int64_t n = std::min<int64_t>(1 + rng() % 6, seq.tokens.size() - seq.written);
      const std::vector<int32_t>& table = a.BlockTable(it->first);
      for (int64_t p = seq.written; p < seq.written + n; ++p) {
        if (seq.tokens[p] == -2) seq.tokens[p] = static_cast<int32_t>(rng() % 50);
        const int32_t block = table[p / kBlockSize];
        ASSERT_EQ(a.ref_count(block), 1) << "sequence writes into shared block " << block;
        ASSERT_FALSE(a.is_cached(block)) << "sequence writes into cached block " << block;
        content[block * kBlockSize + p % kBlockSize] = seq.tokens[p];
      }
      seq.written += n;
      a.CacheFullBlocks(it->first, seq.tokens, seq.written);
    } else {
      auto it = std::next(live.begin(), rng() % live.size());
      ASSERT_TRUE(a.FreeSequence(it->first).ok());
      live.erase(it);
    }
    // Reference counts equal the number of tables holding each block; owned + allocatable
    // (free or evictable) = total.
    std::map<int32_t, int32_t> owners;
    for (const auto& [id, seq] : live) {
      for (int32_t b : a.BlockTable(id)) ++owners[b];
    }
    int32_t used = 0;
    for (int32_t b = 0; b < kBlocks; ++b) {
      const auto it = owners.find(b);
      ASSERT_EQ(a.ref_count(b), it == owners.end() ? 0 : it->second) << "block " << b;
      used += a.ref_count(b) > 0 ? 1 : 0;
    }
    ASSERT_EQ(used + a.num_free_blocks(), kBlocks);
    ASSERT_EQ(a.stats().used_blocks, used);
    ASSERT_LE(a.stats().evictable_blocks, a.stats().cached_blocks);
  }
  EXPECT_GT(hits, 100) << "the random prompts should share prefixes";
  for (const auto& [id, seq] : live) ASSERT_TRUE(a.FreeSequence(id).ok());
  EXPECT_EQ(a.stats().used_blocks, 0);
  EXPECT_EQ(a.stats().sequences, 0);
  EXPECT_EQ(a.num_free_blocks(), kBlocks) << "only evictable cached blocks remain";
  EXPECT_EQ(a.stats().evictable_blocks, a.stats().cached_blocks);
  // Every block can be handed out again exactly once, evicting the whole cache.
  auto all = a.Allocate(kBlocks);
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(std::set<int32_t>(all->begin(), all->end()).size(), static_cast<size_t>(kBlocks));
  EXPECT_EQ(a.stats().cached_blocks, 0);
  for (int32_t b : *all) ASSERT_TRUE(a.Release(b).ok());
  EXPECT_EQ(a.num_free_blocks(), kBlocks);
}

}  // namespace
}  // namespace spqr
