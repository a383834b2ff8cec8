// The column loop shared by SpQR, GPTQ and RTN: lazily fitted group statistics, per-column
// quantization, the SpQR outlier test and GPTQ's error propagation in lazy blocks.
#pragma once

#include <atomic>
#include <cstdint>
#include <utility>
#include <vector>

#include "quantizer/group_stats.h"

namespace spqr {

struct ColumnLoopParams {
  int64_t m = 0, n = 0;
  int wbits = 0, beta1 = 0, beta2 = 0, stats_bits = 0;
  FirstLevelStyle style = FirstLevelStyle::kSpqr;
  // Outlier threshold T on the scaled squared error (infinity: no outliers, no leave-one-out).
  double threshold = 0.0;
  int block_size = 128;
  // U [n][n] (upper Cholesky factor of the permuted H^-1) and its diagonal; both null for RTN
  // (no error propagation, d_j = 1).
  const float* inv_chol = nullptr;
  const float* inv_chol_diag = nullptr;
  int threads = 1;
  // When set and non-zero at the start of a column block, the loop returns early with
  // ColumnLoopOutput::stopped set (the caller's job was interrupted; the output is incomplete).
  const std::atomic<int>* stop = nullptr;
};

struct ColumnLoopOutput {
  bool stopped = false;
  std::vector<uint8_t> codes;                 // [m][n], permuted columns
  std::vector<uint8_t> scale_codes;           // [m][G] (stats_bits < 16)
  std::vector<uint8_t> zero_codes;            // [m][G] (stats_bits < 16)
  std::vector<uint16_t> second_level;         // [ceil(m/beta2)][G][4] (stats_bits < 16)
  std::vector<uint16_t> scale_f16, zero_f16;  // [m][G] (stats_bits == 16)
  // Per row: (permuted column, fp16 residual) in increasing column order.
  std::vector<std::vector<std::pair<uint32_t, uint16_t>>> outliers;
  std::vector<float> w_hat;        // [m][n] permuted: exactly the decoder's values
  int64_t num_fit_candidates = 0;  // leave-one-out candidates excluded from statistics fitting
};

// Runs the loop over the permuted weights `w` ([m][n] row-major), which it updates in place
// (GPTQ's error compensation).
void RunColumnLoop(float* w, const ColumnLoopParams& p, ColumnLoopOutput* out);

}  // namespace spqr
