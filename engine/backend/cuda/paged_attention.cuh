// The KV-cache ops of the CUDA backend: writing a step's keys/values into the paged pool and
// causal grouped-query attention over it, for ragged batches that mix prefill chunks and decode
// rows. The CPU twins are cpu::StoreKv and cpu::PagedAttention (engine/backend/cpu/attention.h).
//
// The device pool has the CPU pool's layout and element type (fp32), so the two backends agree to
// the rounding of the softmax and dot products:
//   [block][layer][k|v][kv_head][slot][head_dim]
// (cpu::PagedKvPool::Offset). One block of one layer is therefore 2 * kv_heads * block_size *
// head_dim contiguous floats.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "absl/status/status.h"

namespace spqr {

// The pool in device memory.
struct KvPoolDeviceView {
  float* data = nullptr;  // num_blocks * block_size * 2 * num_layers * kv_heads * head_dim floats
  int32_t num_layers = 0;
  int32_t kv_heads = 0;
  int32_t head_dim = 0;  // even, <= 256
  int32_t num_blocks = 0;
  int32_t block_size = 0;
};

// One sequence of the step, in device memory (an array of these per step). Its rows are
// [row_offset, row_offset + num_tokens) of q/k/v/out, at positions [start_pos, start_pos +
// num_tokens); its block table is block_tables[block_table_offset ...], one entry per
// block_size positions, covering every position up to the last row (the host validated it).
struct AttentionSeqDevice {
  int32_t row_offset = 0;
  int32_t num_tokens = 0;
  int32_t start_pos = 0;
  int32_t block_table_offset = 0;
};

struct StoreKvParams {
  const float* k = nullptr;                  // [rows, kv_heads * head_dim]
  const float* v = nullptr;                  // [rows, kv_heads * head_dim]
  const AttentionSeqDevice* seqs = nullptr;  // [num_seqs] device
  const int32_t* block_tables = nullptr;     // device
  int32_t num_seqs = 0;
  int32_t rows = 0;  // sum of num_tokens
  int32_t layer = 0;
  KvPoolDeviceView pool;
};

// Validates (INVALID_ARGUMENT naming the field) and enqueues the writes on `stream`.
// rows == 0 is a no-op.
absl::Status LaunchStoreKv(const StoreKvParams& params, cudaStream_t stream);

struct PagedAttentionParams {
  const float* q = nullptr;                  // [rows, num_heads * head_dim]
  float* out = nullptr;                      // [rows, num_heads * head_dim]; overwritten
  const AttentionSeqDevice* seqs = nullptr;  // [num_seqs] device
  const int32_t* block_tables = nullptr;     // device
  int32_t num_seqs = 0;
  int32_t rows = 0;           // sum of num_tokens
  int32_t max_positions = 0;  // max over seqs of start_pos + num_tokens (sizes the launch)
  int32_t num_heads = 0;      // a multiple of pool.kv_heads; head h reads kv head h / group
  int32_t layer = 0;
  KvPoolDeviceView pool;
};

// out[row, head] = softmax(q[row, head] . K^T / sqrt(head_dim)) V over positions [0, pos(row)] of
// the row's own sequence at `layer` (fp32 throughout, max-subtracted softmax). LaunchStoreKv of
// this layer and step must have been enqueued before. Validates (INVALID_ARGUMENT naming the
// field) and enqueues on `stream`; rows == 0 is a no-op.
absl::Status LaunchPagedAttention(const PagedAttentionParams& params, cudaStream_t stream);

}  // namespace spqr
