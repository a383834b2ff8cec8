#include "quantizer/hessian.h"

#include <omp.h>

#include <Eigen/Cholesky>
#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <numeric>

#include "absl/strings/str_cat.h"

namespace spqr {

HessianAccumulator::HessianAccumulator(int64_t in_features)
    : n_(in_features), h_(static_cast<size_t>(in_features * in_features), 0.0f) {}

void HessianAccumulator::AddBatch(const float* x, int64_t rows) {
  if (rows <= 0) return;
  using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  Eigen::Map<RowMat> h(h_.data(), n_, n_);
  Eigen::Map<const RowMat> xs(x, rows, n_);
  const int64_t total = samples_ + rows;
  h *= static_cast<float>(static_cast<double>(samples_) / static_cast<double>(total));
  samples_ = total;
  const float scale = static_cast<float>(2.0 / static_cast<double>(samples_));
  h.noalias() += scale * (xs.transpose() * xs);
}

void HessianAccumulator::AddBatches(std::span<const float* const> xs, int64_t rows, int threads) {
  if (rows <= 0 || xs.empty()) return;
  using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  // Panels of 64 rows: enough of them to balance a few threads on the smallest layers, wide
  // enough for Eigen's GEMM kernel to run at full speed.
  constexpr int64_t kPanelRows = 64;
  const int64_t panels = (n_ + kPanelRows - 1) / kPanelRows;
  const int64_t before = samples_;
#pragma omp parallel for num_threads(std::max(threads, 1)) schedule(dynamic, 1)
  for (int64_t p = 0; p < panels; ++p) {
    const int64_t r0 = p * kPanelRows, width = std::min(kPanelRows, n_ - r0);
    auto h = Eigen::Map<RowMat>(h_.data(), n_, n_).middleRows(r0, width);
    int64_t samples = before;
    for (const float* x : xs) {
      Eigen::Map<const RowMat> xm(x, rows, n_);
      const int64_t total = samples + rows;
      h *= static_cast<float>(static_cast<double>(samples) / static_cast<double>(total));
      samples = total;
      const float scale = static_cast<float>(2.0 / static_cast<double>(samples));
      h.noalias() += scale * (xm.middleCols(r0, width).transpose() * xm);
    }
  }
  samples_ = before + rows * static_cast<int64_t>(xs.size());
}

absl::StatusOr<PreparedHessian> PrepareHessian(const float* h_in, int64_t n, double lambda,
                                               bool act_order) {
  using MatD = Eigen::MatrixXd;
  PreparedHessian out;
  out.perm.resize(static_cast<size_t>(n));
  std::iota(out.perm.begin(), out.perm.end(), 0u);
  if (act_order) {
    std::stable_sort(out.perm.begin(), out.perm.end(),
                     [&](uint32_t a, uint32_t b) { return h_in[a * n + a] > h_in[b * n + b]; });
  }
  MatD h(n, n);
  out.permuted_h.resize(static_cast<size_t>(n * n));
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      const float v = h_in[static_cast<int64_t>(out.perm[i]) * n + out.perm[j]];
      if (!std::isfinite(v)) {
        return absl::InvalidArgumentError(absl::StrCat("Hessian has a non-finite entry at (",
                                                       out.perm[i], ", ", out.perm[j], ")"));
      }
      h(i, j) = v;
      out.permuted_h[i * n + j] = v;
    }
  }
  out.dead.assign(static_cast<size_t>(n), 0);
  double mean_diag = 0.0;
  for (int64_t j = 0; j < n; ++j) {
    if (h(j, j) == 0.0) {
      out.dead[j] = 1;
      ++out.num_dead;
    }
    mean_diag += std::fabs(h(j, j));
  }
  mean_diag /= static_cast<double>(n);
  for (int64_t j = 0; j < n; ++j) {
    h(j, j) += lambda * mean_diag;
    if (out.dead[j]) h(j, j) = 1.0;
  }
  Eigen::LLT<MatD> llt(h);
  if (llt.info() != Eigen::Success) {
    return absl::FailedPreconditionError(
        absl::StrCat("Hessian is not positive definite after damping lambda=", lambda,
                     " (mean diagonal ", mean_diag, "); increase lambda or the calibration data"));
  }
  const MatD h_inv = llt.solve(MatD::Identity(n, n));
  Eigen::LLT<MatD> llt_inv(0.5 * (h_inv + h_inv.transpose()));
  if (llt_inv.info() != Eigen::Success) {
    return absl::FailedPreconditionError(
        absl::StrCat("inverse Hessian is not positive definite (lambda=", lambda, ")"));
  }
  const MatD lower = llt_inv.matrixL();
  out.inv_chol.assign(static_cast<size_t>(n * n), 0.0f);
  out.inv_chol_diag.resize(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = i; j < n; ++j) out.inv_chol[i * n + j] = static_cast<float>(lower(j, i));
    out.inv_chol_diag[i] = out.inv_chol[i * n + i];
  }
  return out;
}

}  // namespace spqr
