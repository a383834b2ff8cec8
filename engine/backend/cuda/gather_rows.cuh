// out[i, :] = in[rows[i], :] over fp32 rows: picks the rows of the residual stream whose logits a
// step wants before the final norm and lm_head. A copy, so bit-exact.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "absl/status/status.h"

namespace spqr {

struct GatherRowsParams {
  const float* input = nullptr;   // [in_rows, cols] row-major
  const int32_t* rows = nullptr;  // [out_rows] device array, each in [0, in_rows)
  float* output = nullptr;        // [out_rows, cols] row-major; must not overlap input
  int64_t in_rows = 0;            // for validation of the host-side contract only
  int64_t out_rows = 0;
  int64_t cols = 0;
};

// Validates (INVALID_ARGUMENT naming the field) and enqueues the copy on `stream`. The row
// indices are device data: their range is the caller's promise. out_rows == 0 is a no-op.
absl::Status LaunchGatherRows(const GatherRowsParams& params, cudaStream_t stream);

}  // namespace spqr
