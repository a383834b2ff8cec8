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

}  // namespace
}  // namespace spqr
