// Row gathers of the CUDA forward: the token embedding lookup (rows of the [vocab, hidden] table,
// stored as fp16, bf16 or fp32, converted to fp32) and the selection of the rows whose logits are
// wanted (fp32 to fp32). out[i, :] = float(table[indices[i], :]). The conversions are exact (every
// fp16/bf16 value is an fp32 value), so the result equals cpu::EmbeddingLookup bit for bit.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "absl/status/status.h"
#include "engine/model/tensor.h"

namespace spqr {

struct GatherRowsParams {
  const void* table = nullptr;  // [table_rows, cols] of table_dtype, row-major
  DType table_dtype = DType::kF32;
  int64_t table_rows = 0;
  const int32_t* indices = nullptr;  // [rows] device array
  float* output = nullptr;           // [rows, cols], row-major
  int64_t rows = 0;
  int64_t cols = 0;
};

// Validates (INVALID_ARGUMENT naming the field) and enqueues the gather on `stream`. rows == 0 is
// a no-op. An index outside [0, table_rows) (the host validates them; this is a second line of
// defence) writes a row of NaNs instead of reading outside the table.
absl::Status LaunchGatherRows(const GatherRowsParams& params, cudaStream_t stream);

}  // namespace spqr
