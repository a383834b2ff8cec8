// GPU parity of the KV-cache ops (LaunchStoreKv, LaunchPagedAttention) with the CPU backend's
// (cpu::StoreKv, cpu::PagedAttention) on ragged steps that mix prefill chunks and decode rows
// (cases and tolerances: paged_attention_parity.h), with a fresh seed per run; and their argument
// validation, which needs no device. Skipped with the reason when no usable CUDA device is
// present; also run on the CPU harness as emu.* (tests/cuda_emu/cuda_emu.cmake).
#include "engine/backend/cuda/paged_attention.cuh"

#include <cstdint>
#include <random>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/gpu/cuda_test_support.h"
#include "tests/gpu/paged_attention_parity.h"

namespace spqr {
namespace {

using ::testing::HasSubstr;

class PagedAttentionParityTest : public ::testing::TestWithParam<testing::AttentionCase> {};

TEST_P(PagedAttentionParityTest, MatchesCpuBackend) {
  SPQR_SKIP_WITHOUT_CUDA_DEVICE();
  const uint32_t seed = testing::FreshSeed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937 rng(seed);
  testing::CheckPagedAttentionParity(GetParam(), rng);
}

std::vector<testing::AttentionCase> GpuCases() {
  std::vector<testing::AttentionCase> cases = testing::PagedAttentionCases();
  // LLaMA-3-8B's heads (32 query, 8 KV, head_dim 128): two decode rows and a 64-row chunk.
  cases.push_back({32, 8, 128, 16, {{1, 200}, {64, 100}, {1, 5}}});
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Steps, PagedAttentionParityTest, ::testing::ValuesIn(GpuCases()));

// A valid step description with non-null (never dereferenced) pointers, for the validation tests.
struct ValidArgs {
  alignas(8) float floats[4] = {};
  AttentionSeqDevice seq;
  int32_t table[1] = {0};
  KvPoolDeviceView Pool() {
    KvPoolDeviceView pool;
    pool.data = floats;
    pool.num_layers = 2;
    pool.kv_heads = 2;
    pool.head_dim = 64;
    pool.num_blocks = 4;
    pool.block_size = 16;
    return pool;
  }
  PagedAttentionParams Attention() {
    PagedAttentionParams p;
    p.q = floats;
    p.out = floats;
    p.seqs = &seq;
    p.block_tables = table;
    p.num_seqs = 1;
    p.rows = 1;
    p.max_positions = 1;
    p.num_heads = 8;
    p.layer = 1;
    p.pool = Pool();
    return p;
  }
  StoreKvParams Store() {
    StoreKvParams p;
    p.k = floats;
    p.v = floats;
    p.seqs = &seq;
    p.block_tables = table;
    p.num_seqs = 1;
    p.rows = 1;
    p.layer = 1;
    p.pool = Pool();
    return p;
  }
};

std::string AttentionError(const PagedAttentionParams& p) {
  return std::string(LaunchPagedAttention(p, nullptr).message());
}
std::string StoreError(const StoreKvParams& p) {
  return std::string(LaunchStoreKv(p, nullptr).message());
}

TEST(LaunchValidationTest, PagedAttentionRejectsBadArguments) {
  ValidArgs a;
  PagedAttentionParams p = a.Attention();
  p.num_heads = 7;  // not a multiple of kv_heads = 2
  EXPECT_THAT(AttentionError(p), HasSubstr("num_heads = 7 is not a multiple of pool.kv_heads"));
  EXPECT_EQ(LaunchPagedAttention(p, nullptr).code(), absl::StatusCode::kInvalidArgument);
  p = a.Attention();
  p.pool.head_dim = 512;
  EXPECT_THAT(AttentionError(p), HasSubstr("pool.head_dim = 512 is outside [2, 256]"));
  p.pool.head_dim = 65;
  EXPECT_THAT(AttentionError(p), HasSubstr("pool.head_dim = 65 must be even"));
  p = a.Attention();
  p.q = nullptr;
  EXPECT_THAT(AttentionError(p), HasSubstr("q is null"));
  p = a.Attention();
  p.out = nullptr;
  EXPECT_THAT(AttentionError(p), HasSubstr("out is null"));
  p = a.Attention();
  p.seqs = nullptr;
  EXPECT_THAT(AttentionError(p), HasSubstr("seqs is null"));
  p = a.Attention();
  p.block_tables = nullptr;
  EXPECT_THAT(AttentionError(p), HasSubstr("block_tables is null"));
  p = a.Attention();
  p.pool.data = nullptr;
  EXPECT_THAT(AttentionError(p), HasSubstr("pool.data is null"));
  p = a.Attention();
  p.q = a.floats + 1;  // 4-byte aligned only
  EXPECT_THAT(AttentionError(p), HasSubstr("q is not 8-byte aligned"));
  p = a.Attention();
  p.layer = 2;
  EXPECT_THAT(AttentionError(p), HasSubstr("layer = 2 is outside [0, 1]"));
  p = a.Attention();
  p.pool.kv_heads = 0;
  EXPECT_THAT(AttentionError(p), HasSubstr("pool.kv_heads = 0"));
  p = a.Attention();
  p.pool.block_size = 0;
  EXPECT_THAT(AttentionError(p), HasSubstr("pool.block_size = 0"));
  p = a.Attention();
  p.max_positions = 0;
  EXPECT_THAT(AttentionError(p), HasSubstr("max_positions = 0"));
  p = a.Attention();
  p.num_seqs = 0;
  EXPECT_THAT(AttentionError(p), HasSubstr("num_seqs = 0"));
  p = a.Attention();
  p.rows = -1;
  EXPECT_THAT(AttentionError(p), HasSubstr("rows = -1"));
  // rows == 0 is a no-op even without buffers.
  PagedAttentionParams empty = a.Attention();
  empty.rows = 0;
  empty.q = empty.out = nullptr;
  EXPECT_TRUE(LaunchPagedAttention(empty, nullptr).ok());
}

TEST(LaunchValidationTest, StoreKvRejectsBadArguments) {
  ValidArgs a;
  StoreKvParams p = a.Store();
  p.k = nullptr;
  EXPECT_THAT(StoreError(p), HasSubstr("LaunchStoreKv: k is null"));
  p = a.Store();
  p.v = nullptr;
  EXPECT_THAT(StoreError(p), HasSubstr("v is null"));
  p = a.Store();
  p.pool.data = nullptr;
  EXPECT_THAT(StoreError(p), HasSubstr("pool.data is null"));
  p = a.Store();
  p.pool.head_dim = 258;
  EXPECT_THAT(StoreError(p), HasSubstr("pool.head_dim = 258"));
  p = a.Store();
  p.layer = -1;
  EXPECT_THAT(StoreError(p), HasSubstr("layer = -1"));
  p = a.Store();
  p.pool.num_blocks = 0;
  EXPECT_THAT(StoreError(p), HasSubstr("pool.num_blocks = 0"));
  p = a.Store();
  p.v = a.floats + 1;
  EXPECT_THAT(StoreError(p), HasSubstr("v is not 8-byte aligned"));
  StoreKvParams empty = a.Store();
  empty.rows = 0;
  empty.k = empty.v = nullptr;
  EXPECT_TRUE(LaunchStoreKv(empty, nullptr).ok());
}

}  // namespace
}  // namespace spqr
