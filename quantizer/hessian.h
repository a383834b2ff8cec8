// The GPTQ/SpQR Hessian proxy of a linear layer's input, H = (2/N) sum_t x_t x_t^T, and its
// preparation for the column loop (act-order permutation, dead inputs, damping, inverse Cholesky).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/statusor.h"

namespace spqr {

// Accumulates H over batches of inputs in fp32, as a running average so H stays (2/N) sum x x^T
// for the N rows seen so far (the reference's add_batch).
class HessianAccumulator {
 public:
  explicit HessianAccumulator(int64_t in_features);
  // x: [rows][in_features] row-major.
  void AddBatch(const float* x, int64_t rows);
  // AddBatch(xs[0], rows), AddBatch(xs[1], rows), ... in that order, with the update of H split
  // into fixed panels of rows spread over `threads` OpenMP threads. Each element of H gets the
  // same arithmetic as in AddBatch with serial Eigen products (a row panel of the row-major product
  // is a column panel of Eigen's column-major one, which Eigen computes element by element the
  // same way; tested bit for bit), so the result does not depend on `threads`. Eigen's own
  // threading must be off (Eigen::setNbThreads(1)) when threads <= 1, as in QuantizeModel.
  void AddBatches(std::span<const float* const> xs, int64_t rows, int threads);
  int64_t in_features() const { return n_; }
  int64_t num_samples() const { return samples_; }
  // Row-major [n][n].
  const std::vector<float>& matrix() const { return h_; }

 private:
  int64_t n_;
  int64_t samples_ = 0;
  std::vector<float> h_;
};

// What the column loop needs from H.
struct PreparedHessian {
  std::vector<uint32_t> perm;        // perm[j] = original column of permuted column j
  std::vector<float> inv_chol;       // U [n][n] row-major: upper Cholesky factor of H^-1 (permuted)
  std::vector<float> inv_chol_diag;  // d_j = U_jj
  std::vector<uint8_t> dead;         // permuted: 1 where H_jj == 0
  std::vector<float> permuted_h;     // the undamped H in permuted order (for error reporting)
  int64_t num_dead = 0;
};

// perm = stable argsort of diag(H) descending when act_order (identity otherwise); dead inputs
// (H_jj == 0) get H_jj = 1 after damping H_jj += lambda * mean(diag H); U from LLT(H) -> H^-1 ->
// LLT(H^-1)^T in double precision. FailedPrecondition when H is not positive definite.
absl::StatusOr<PreparedHessian> PrepareHessian(const float* h, int64_t n, double lambda,
                                               bool act_order);

}  // namespace spqr
