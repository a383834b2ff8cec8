// Parity of the CUDA KV-cache ops (LaunchStoreKv, LaunchPagedAttention) with their CPU twins
// (cpu::StoreKv, cpu::PagedAttention) on one ragged step, shared by tests/cuda_emu/kernels_test.cc
// (the harness, forward and reverse thread order) and tests/gpu/paged_attention_test.cc (natively
// on a GPU, and on the harness in shuffled order as emu.*).
//
// One step: several sequences, each a chunk of num_tokens rows at positions [start_pos, start_pos
// + num_tokens) (a prefill chunk, or a decode row when num_tokens == 1), rows laid out in a
// shuffled sequence order, block tables drawn from a random permutation of the pool's blocks (not
// contiguous, and spare blocks left unused). The pool starts as NaN except for each sequence's
// history (positions < start_pos) at the tested layer, so an attention that reads a slot outside
// its causal window, another layer or an unwritten block cannot produce a finite result. The
// layer tested is 1 of 2.
//
// Checks: the pool after the store is bit-identical to the CPU pool (a copy is exact); the
// attention output (poisoned beforehand) is within
//   |got - want| <= (kAttnAtol + kAttnRtol |want|) max(1, q_scale),  kAttnAtol = kAttnRtol = 2e-5,
// for keys and values of unit variance and queries of standard deviation q_scale. Both sides are
// fp32 with a max-subtracted softmax; they differ in the dot products' summation order (two fmaf
// chains, even and odd dims, vs. the CPU's SIMD lanes), expf's last bits on a GPU, and the
// normalization (the kernel divides the accumulated sum once at the end, the CPU scales each
// probability first). Each is a few ulp of the scores and of the output (|out| <= max |v| ~ 4),
// about 1e-6, growing slowly with the number of positions (hundreds here); the bound is 20-40x
// that. The scores' rounding errors are ulps of the scores, whose size grows with q_scale, hence
// the factor. A case with queries scaled up makes the softmax peaky (scores of order 100: without
// the max subtraction expf overflows and the output is NaN). Measured on the harness, the worst
// error is 1-3% of the bound in every case.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <numeric>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "engine/backend/cpu/attention.h"
#include "engine/backend/cpu/paged_kv_pool.h"
#include "engine/backend/cuda/device_buffer.h"
#include "engine/backend/cuda/paged_attention.cuh"
#include "gtest/gtest.h"

namespace spqr::testing {

inline constexpr double kAttnAtol = 2e-5;
inline constexpr double kAttnRtol = 2e-5;

struct AttnSeqSpec {
  int32_t num_tokens = 0;
  int32_t start_pos = 0;
};

struct AttentionCase {
  int32_t num_heads = 0;
  int32_t kv_heads = 0;
  int32_t head_dim = 0;
  int32_t block_size = 0;
  std::vector<AttnSeqSpec> seqs;
  float q_scale = 1.0f;  // standard deviation of the queries (keys and values: 1)
};

inline void PrintTo(const AttentionCase& c, std::ostream* os) {
  *os << "h" << c.num_heads << "_kv" << c.kv_heads << "_d" << c.head_dim << "_bs" << c.block_size
      << "_q" << c.q_scale << "_seqs";
  for (const AttnSeqSpec& s : c.seqs) *os << "_" << s.start_pos << "+" << s.num_tokens;
}

// The shapes both suites run (small position counts, one longer case: the harness runs threads
// as fibers). GQA groups 1, 2, 3, 4, 8, 20; head_dim 48, 64, 80, 128, 256; block sizes 5, 7, 16;
// prefill chunks of odd lengths at start_pos 0 and > 0, decode rows (also at position 0), and
// both in one step.
inline std::vector<AttentionCase> PagedAttentionCases() {
  return {
      // Group 4 (LLaMA-3-like ratio), mixed step: prefill from 0, a chunk continuing at 45,
      // decode rows at 70 and at 0, a short chunk at a block boundary.
      {8, 2, 64, 16, {{37, 0}, {19, 45}, {1, 70}, {1, 0}, {3, 16}}},
      // Group 1 (no GQA), head_dim 128.
      {3, 3, 128, 16, {{1, 33}, {20, 7}}},
      // Group 8, head_dim 80, block size 5.
      {16, 2, 80, 5, {{1, 52}, {9, 0}, {1, 13}}},
      // Group 3, head_dim 48, block size 7, peaky softmax (scores of order 100).
      {6, 2, 48, 7, {{17, 31}, {1, 60}}, 40.0f},
      // head_dim 256 (more than 48 KiB of shared memory).
      {2, 1, 256, 16, {{5, 40}, {1, 10}}},
      // Group 20: more query heads per KV head than one CTA takes (16), so two CTAs per KV head;
      // a sequence with no tokens in this step between two others.
      {40, 2, 64, 16, {{2, 9}, {0, 20}, {1, 3}}},
      // The longer case: decode at 450 and a 40-row chunk at 300.
      {4, 1, 64, 16, {{1, 450}, {40, 300}}},
  };
}

inline std::vector<float> AttnRandomNormal(size_t n, float stddev, std::mt19937& rng) {
  std::normal_distribution<float> dist(0.0f, stddev);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

template <typename T>
DeviceBuffer AttnUpload(const T* data, size_t count) {
  absl::StatusOr<DeviceBuffer> b = DeviceBuffer::Allocate(count * sizeof(T));
  EXPECT_TRUE(b.ok()) << b.status();
  if (!b.ok()) return DeviceBuffer();
  EXPECT_EQ(cudaMemcpy(b->data(), data, count * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess);
  return std::move(*b);
}

template <typename T>
std::vector<T> AttnDownload(const DeviceBuffer& b) {
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  absl::StatusOr<std::vector<T>> v = b.ToVector<T>();
  EXPECT_TRUE(v.ok()) << v.status();
  return v.ok() ? *v : std::vector<T>();
}

// Runs one step through both backends and checks the store and the attention (gtest failures).
inline void CheckPagedAttentionParity(const AttentionCase& c, std::mt19937& rng) {
  constexpr int32_t kLayers = 2;
  constexpr int32_t kLayer = 1;
  constexpr int32_t kSpareBlocks = 3;
  const int64_t hd = c.head_dim;
  const int num_seqs = static_cast<int>(c.seqs.size());

  // Block tables from a shuffled list of blocks.
  std::vector<int32_t> table_offset(num_seqs);
  int32_t num_blocks = kSpareBlocks;
  for (int i = 0; i < num_seqs; ++i) {
    table_offset[i] = num_blocks - kSpareBlocks;
    const int64_t positions = c.seqs[i].start_pos + c.seqs[i].num_tokens;
    num_blocks += static_cast<int32_t>((positions + c.block_size - 1) / c.block_size);
  }
  std::vector<int32_t> blocks(num_blocks);
  std::iota(blocks.begin(), blocks.end(), 0);
  std::shuffle(blocks.begin(), blocks.end(), rng);
  const std::vector<int32_t> block_tables(blocks.begin(), blocks.end() - kSpareBlocks);

  // Rows in a shuffled sequence order.
  std::vector<int> order(num_seqs);
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), rng);
  std::vector<AttentionSeqDevice> dev_seqs(num_seqs);
  int32_t rows = 0;
  int32_t max_positions = 0;
  for (int i : order) {
    dev_seqs[i].row_offset = rows;
    rows += c.seqs[i].num_tokens;
  }
  std::vector<cpu::AttentionSequence> cpu_seqs(num_seqs);
  for (int i = 0; i < num_seqs; ++i) {
    dev_seqs[i].num_tokens = c.seqs[i].num_tokens;
    dev_seqs[i].start_pos = c.seqs[i].start_pos;
    dev_seqs[i].block_table_offset = table_offset[i];
    cpu_seqs[i] = {dev_seqs[i].row_offset, c.seqs[i].num_tokens, c.seqs[i].start_pos,
                   block_tables.data() + table_offset[i]};
    max_positions = std::max(max_positions, c.seqs[i].start_pos + c.seqs[i].num_tokens);
  }

  const std::vector<float> q = AttnRandomNormal(size_t(rows) * c.num_heads * hd, c.q_scale, rng);
  const std::vector<float> k = AttnRandomNormal(size_t(rows) * c.kv_heads * hd, 1.0f, rng);
  const std::vector<float> v = AttnRandomNormal(size_t(rows) * c.kv_heads * hd, 1.0f, rng);

  cpu::PagedKvPool pool(kLayers, c.kv_heads, hd, num_blocks, c.block_size);
  float* pool_data = pool.Slot(0, 0, 0, 0, 0);
  const size_t pool_floats = static_cast<size_t>(pool.bytes()) / sizeof(float);
  std::fill(pool_data, pool_data + pool_floats, std::numeric_limits<float>::quiet_NaN());
  std::normal_distribution<float> history(0.0f, 1.0f);
  for (int i = 0; i < num_seqs; ++i) {
    for (int64_t pos = 0; pos < c.seqs[i].start_pos; ++pos) {
      const int32_t block = cpu_seqs[i].block_table[pos / c.block_size];
      for (int kv = 0; kv < 2; ++kv) {
        for (int32_t h = 0; h < c.kv_heads; ++h) {
          float* slot = pool.Slot(block, kLayer, kv, h, pos % c.block_size);
          for (int64_t d = 0; d < hd; ++d) slot[d] = history(rng);
        }
      }
    }
  }

  DeviceBuffer d_pool = AttnUpload(pool_data, pool_floats);
  DeviceBuffer d_q = AttnUpload(q.data(), q.size());
  DeviceBuffer d_k = AttnUpload(k.data(), k.size());
  DeviceBuffer d_v = AttnUpload(v.data(), v.size());
  DeviceBuffer d_seqs = AttnUpload(dev_seqs.data(), dev_seqs.size());
  DeviceBuffer d_tables = AttnUpload(block_tables.data(), block_tables.size());
  absl::StatusOr<DeviceBuffer> d_out = DeviceBuffer::Allocate(q.size() * sizeof(float));
  ASSERT_TRUE(d_out.ok()) << d_out.status();
  ASSERT_TRUE(d_out->Fill(0xff).ok());  // NaN: an unwritten output cannot pass

  KvPoolDeviceView view;
  view.data = d_pool.as<float>();
  view.num_layers = kLayers;
  view.kv_heads = c.kv_heads;
  view.head_dim = c.head_dim;
  view.num_blocks = num_blocks;
  view.block_size = c.block_size;

  const cpu::AttentionShape shape{c.num_heads, c.kv_heads, hd};
  cpu::StoreKv(k.data(), v.data(), cpu_seqs, shape, kLayer, &pool);
  StoreKvParams store;
  store.k = d_k.as<float>();
  store.v = d_v.as<float>();
  store.seqs = d_seqs.as<AttentionSeqDevice>();
  store.block_tables = d_tables.as<int32_t>();
  store.num_seqs = num_seqs;
  store.rows = rows;
  store.layer = kLayer;
  store.pool = view;
  ASSERT_TRUE(LaunchStoreKv(store, nullptr).ok());
  const std::vector<float> got_pool = AttnDownload<float>(d_pool);
  ASSERT_EQ(got_pool.size(), pool_floats);
  EXPECT_EQ(std::memcmp(got_pool.data(), pool_data, pool_floats * sizeof(float)), 0)
      << "the device pool after LaunchStoreKv differs from cpu::StoreKv's";

  std::vector<float> want(q.size());
  cpu::PagedAttention(q.data(), cpu_seqs, shape, kLayer, pool, want.data(), 2);
  PagedAttentionParams attn;
  attn.q = d_q.as<float>();
  attn.out = d_out->as<float>();
  attn.seqs = d_seqs.as<AttentionSeqDevice>();
  attn.block_tables = d_tables.as<int32_t>();
  attn.num_seqs = num_seqs;
  attn.rows = rows;
  attn.max_positions = max_positions;
  attn.num_heads = c.num_heads;
  attn.layer = kLayer;
  attn.pool = view;
  const absl::Status launched = LaunchPagedAttention(attn, nullptr);
  ASSERT_TRUE(launched.ok()) << launched;
  const std::vector<float> got = AttnDownload<float>(*d_out);
  ASSERT_EQ(got.size(), want.size());
  int bad = 0;
  double worst = 0.0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double bound = (kAttnAtol + kAttnRtol * std::abs(want[i])) * std::max(1.0f, c.q_scale);
    const double err = std::abs(double{got[i]} - want[i]);
    if (!(std::isfinite(got[i]) && std::isfinite(want[i]) && err <= bound)) {
      if (++bad <= 5) {
        const int64_t row = static_cast<int64_t>(i) / (c.num_heads * hd);
        ADD_FAILURE() << "out[row " << row << ", head " << (i / hd) % c.num_heads << ", dim "
                      << i % hd << "] = " << got[i] << ", cpu " << want[i];
      }
    } else {
      worst = std::max(worst, err / bound);
    }
  }
  EXPECT_EQ(bad, 0) << "of " << got.size() << " outputs";
  ::testing::Test::RecordProperty("worst_error_fraction_of_bound", std::to_string(worst));
  std::printf("paged attention: worst error %.3g of the bound over %zu outputs\n", worst,
              got.size());
}

}  // namespace spqr::testing
