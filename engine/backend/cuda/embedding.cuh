// Token embedding lookup: out[r, :] = float(table[ids[r], :]) from a [vocab, hidden] table stored
// as fp32, fp16 or bf16 (exact conversions, so the result equals cpu::EmbeddingLookup bit for
// bit).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "absl/status/status.h"
#include "engine/model/tensor.h"

namespace spqr {

struct EmbeddingParams {
  const void* table = nullptr;  // [vocab, hidden] of table_dtype, row-major
  DType table_dtype = DType::kBF16;
  const int32_t* ids = nullptr;  // [rows] device array, each in [0, vocab) (validated by the host)
  float* output = nullptr;       // [rows, hidden] row-major
  int64_t rows = 0;
  int64_t hidden = 0;
};

// Validates (INVALID_ARGUMENT naming the field) and enqueues the lookup on `stream`. The ids are
// device data, so their range is the caller's promise (the backend validates step plans).
// rows == 0 is a no-op.
absl::Status LaunchEmbedding(const EmbeddingParams& params, cudaStream_t stream);

}  // namespace spqr
