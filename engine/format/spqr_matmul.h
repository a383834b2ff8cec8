// CPU matrix-vector / matrix-matrix product directly on a packed SpQR layer: codes and statistics
// are decoded on the fly one output row at a time (never the whole dense matrix), the input
// permutation is a gather of x done once per call, and outliers are applied.
//
// Result: y[b][r] = sum_j w(r, j) * x[b][perm[j]], where every w(r, j) is computed with exactly
// DecodePermutedRow()'s arithmetic (so it equals W_hat[r][perm[j]] bit for bit). Only the order of
// the sum differs from a dense W_hat @ x (batch 1 with beta1 in {8, 16, 32}: decode fused into a
// beta1-lane dot product, outlier residuals added as a separate sparse sum, for an "fp16
// arithmetic" layer h(w + residual) - w; otherwise the row is decoded into a buffer, outliers
// included, and dotted in 8 lanes), so
// |y - y_dense| <= ~2 * n * 2^-24 * sum_j (|dense_j| + |residual_j|) * |x_j|   (tested with
// sum_j |w_j x_j|, which equals it wherever there is no outlier).
//
// Single-threaded; callers split output rows across threads with SpqrMatmulRows.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "engine/format/spqr_layer.h"

namespace spqr {

// x_perm[b][j] = x[b][perm[j]] for b < batch (x and x_perm are [batch][n], row-major).
void GatherPermutedInputs(const PackedSpqrLayer& layer, const float* x, int64_t batch,
                          float* x_perm);

// y[b * y_stride + r] = sum_j w(r, j) * x_perm[b][j] for rows r in [row_begin, row_end).
// `row_scratch` holds at least n floats. The layer must have passed ValidateSpqrLayer.
void SpqrMatmulRows(const PackedSpqrLayer& layer, const float* x_perm, int64_t batch, float* y,
                    int64_t y_stride, int64_t row_begin, int64_t row_end, float* row_scratch);

// Whole product y [batch][m] = x [batch][n] @ W_hat^T, single-threaded, with shape checks.
absl::Status SpqrMatmul(const PackedSpqrLayer& layer, const float* x, int64_t batch, float* y);

}  // namespace spqr
