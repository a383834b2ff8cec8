#include "quantizer/spqr_layer_quantizer.h"

#include <omp.h>

#include <Eigen/Core>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "engine/format/bit_packing.h"
#include "quantizer/gptq.h"
#include "quantizer/hessian.h"

namespace spqr {
namespace {

using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// T = tau * mean_j(Var_i(W_ij) / d_j^2), unbiased variance over output rows, on the permuted
// weights before any quantization.
double OutlierScale(const float* w, int64_t m, int64_t n, const float* d) {
  if (m < 2) return 0.0;
  std::vector<double> mean(static_cast<size_t>(n), 0.0), sq(static_cast<size_t>(n), 0.0);
  for (int64_t r = 0; r < m; ++r) {
    for (int64_t j = 0; j < n; ++j) mean[j] += w[r * n + j];
  }
  for (int64_t j = 0; j < n; ++j) mean[j] /= static_cast<double>(m);
  for (int64_t r = 0; r < m; ++r) {
    for (int64_t j = 0; j < n; ++j) {
      const double t = w[r * n + j] - mean[j];
      sq[j] += t * t;
    }
  }
  double total = 0.0;
  for (int64_t j = 0; j < n; ++j) {
    total += sq[j] / static_cast<double>(m - 1) / (static_cast<double>(d[j]) * d[j]);
  }
  return total / static_cast<double>(n);
}

// tr(D H D^T) for D = a - b (all permuted consistently), in double.
double HessianWeighted(const float* a, const float* b, const float* h, int64_t m, int64_t n) {
  Eigen::MatrixXd diff(m, n);
  for (int64_t r = 0; r < m; ++r) {
    for (int64_t j = 0; j < n; ++j)
      diff(r, j) = static_cast<double>(a[r * n + j]) - (b ? b[r * n + j] : 0.0);
  }
  Eigen::MatrixXd hd(n, n);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < n; ++j) hd(i, j) = h[i * n + j];
  }
  return (diff * hd).cwiseProduct(diff).sum();
}

}  // namespace

const char* MethodName(SpqrLayerConfig::Method method) {
  switch (method) {
    case SpqrLayerConfig::Method::kSpqr:
      return "spqr";
    case SpqrLayerConfig::Method::kGptq:
      return "gptq";
    case SpqrLayerConfig::Method::kRtn:
      return "rtn";
  }
  return "unknown";
}

absl::Status ValidateLayerOptions(const SpqrLayerConfig& c) {
  if (c.wbits < 2 || c.wbits > 8) {
    return absl::InvalidArgumentError(absl::StrCat("wbits must be in 2..8, got ", c.wbits));
  }
  if (c.beta1 < 0 || c.beta1 > kMaxGroupSize) {
    return absl::InvalidArgumentError(
        absl::StrCat("beta1 must be in 0..", kMaxGroupSize,
                     " (0 = one group per row, i.e. the layer's input width), got ", c.beta1));
  }
  if (c.beta2 < 1 || c.beta2 > kMaxGroupSize) {
    return absl::InvalidArgumentError(
        absl::StrCat("beta2 must be in 1..", kMaxGroupSize, ", got ", c.beta2));
  }
  if (!((c.stats_bits >= 3 && c.stats_bits <= 8) || c.stats_bits == kFp16Stats)) {
    return absl::InvalidArgumentError(
        absl::StrCat("stats_bits must be in 3..8 or 16, got ", c.stats_bits));
  }
  if (std::isnan(c.tau) || c.tau < 0) {
    return absl::InvalidArgumentError(absl::StrCat("tau must be >= 0 (or inf), got ", c.tau));
  }
  if (std::isfinite(c.tau) && c.method != SpqrLayerConfig::Method::kSpqr) {
    return absl::InvalidArgumentError(absl::StrCat("tau=", c.tau,
                                                   " (outliers) applies to method "
                                                   "spqr only, not ",
                                                   MethodName(c.method)));
  }
  if (!std::isfinite(c.lambda) || c.lambda < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("lambda must be finite and >= 0, got ", c.lambda));
  }
  if (c.act_order && c.method == SpqrLayerConfig::Method::kRtn) {
    return absl::InvalidArgumentError("act_order needs a Hessian; method rtn has none");
  }
  if (c.block_size < 1) {
    return absl::InvalidArgumentError(absl::StrCat("block_size must be >= 1, got ", c.block_size));
  }
  return absl::OkStatus();
}

absl::Status ValidateLayerConfig(const SpqrLayerConfig& c, int64_t m, int64_t n) {
  if (m <= 0 || n <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("layer shape must be positive, got ", m, "x", n));
  }
  if (absl::Status st = ValidateLayerOptions(c); !st.ok()) return st;
  if (c.beta1 > 0 && n % c.beta1 != 0) {
    return absl::InvalidArgumentError(absl::StrCat("beta1=", c.beta1,
                                                   " must divide the layer's input width ", n,
                                                   " (or be 0 for one group per row)"));
  }
  return absl::OkStatus();
}

absl::StatusOr<LayerQuantizationResult> QuantizeLayer(const float* w, int64_t m, int64_t n,
                                                      const float* h, const SpqrLayerConfig& config,
                                                      int threads) {
  absl::Status valid = ValidateLayerConfig(config, m, n);
  if (!valid.ok()) return valid;
  const bool is_rtn = config.method == SpqrLayerConfig::Method::kRtn;
  if (h == nullptr && !is_rtn) {
    return absl::InvalidArgumentError(
        absl::StrCat("method ", MethodName(config.method), " needs the layer's Hessian"));
  }
  for (int64_t i = 0; i < m * n; ++i) {
    if (!std::isfinite(w[i])) {
      return absl::InvalidArgumentError(
          absl::StrCat("weight has a non-finite value at (", i / n, ", ", i % n, ")"));
    }
  }
  if (threads <= 0) threads = omp_get_max_threads();
  // Eigen's thread count is process-wide: a caller that quantizes layers in parallel
  // (QuantizeModel) has set it already, and setting it from several threads at once would race.
  if (!omp_in_parallel()) Eigen::setNbThreads(threads);
  const int beta1 = config.beta1 == 0 ? static_cast<int>(n) : config.beta1;

  PreparedHessian prep;
  if (!is_rtn) {
    auto prepared = PrepareHessian(h, n, config.lambda, config.act_order);
    if (!prepared.ok()) return prepared.status();
    prep = *std::move(prepared);
  } else {
    prep.perm.resize(static_cast<size_t>(n));
    for (int64_t j = 0; j < n; ++j) prep.perm[j] = static_cast<uint32_t>(j);
  }
  // Permuted weights; dead inputs zeroed.
  std::vector<float> wp(static_cast<size_t>(m * n));
  for (int64_t r = 0; r < m; ++r) {
    for (int64_t j = 0; j < n; ++j) {
      wp[r * n + j] = (!is_rtn && prep.dead[j]) ? 0.0f : w[r * n + prep.perm[j]];
    }
  }
  std::vector<float> original;
  const bool want_error = config.compute_hessian_error && h != nullptr;
  if (want_error) {
    original.resize(static_cast<size_t>(m * n));
    for (int64_t r = 0; r < m; ++r) {
      for (int64_t j = 0; j < n; ++j) original[r * n + j] = w[r * n + prep.perm[j]];
    }
  }

  LayerQuantizationResult result;
  double threshold = std::numeric_limits<double>::infinity();
  if (config.method == SpqrLayerConfig::Method::kSpqr && std::isfinite(config.tau)) {
    threshold = config.tau * OutlierScale(wp.data(), m, n, prep.inv_chol_diag.data());
  }
  result.outlier_threshold = threshold;
  result.num_dead_inputs = prep.num_dead;

  ColumnLoopParams p;
  p.m = m;
  p.n = n;
  p.wbits = config.wbits;
  p.beta1 = beta1;
  p.beta2 = config.beta2;
  p.stats_bits = config.stats_bits;
  p.style = config.method == SpqrLayerConfig::Method::kSpqr ? FirstLevelStyle::kSpqr
                                                            : FirstLevelStyle::kGptq;
  p.threshold = threshold;
  p.block_size = config.block_size;
  p.inv_chol = is_rtn ? nullptr : prep.inv_chol.data();
  p.inv_chol_diag = is_rtn ? nullptr : prep.inv_chol_diag.data();
  p.threads = threads;
  p.stop = config.stop;
  ColumnLoopOutput loop;
  RunColumnLoop(wp.data(), p, &loop);
  if (loop.stopped) {
    return absl::CancelledError(
        absl::StrCat("interrupted by signal ", config.stop->load(), " while quantizing the layer"));
  }

  PackedSpqrLayer& l = result.packed;
  l.out_features = m;
  l.in_features = n;
  l.wbits = config.wbits;
  l.beta1 = beta1;
  l.beta2 = config.beta2;
  l.stats_bits = config.stats_bits;
  l.weight_codes = PackBitRows(loop.codes.data(), m, n, config.wbits);
  const int64_t groups = n / beta1;
  if (config.stats_bits == kFp16Stats) {
    l.scale_f16 = std::move(loop.scale_f16);
    l.zero_f16 = std::move(loop.zero_f16);
  } else {
    l.scale_codes = PackBitRows(loop.scale_codes.data(), m, groups, config.stats_bits);
    l.zero_codes = PackBitRows(loop.zero_codes.data(), m, groups, config.stats_bits);
    l.second_level = std::move(loop.second_level);
  }
  l.outlier_row_offsets.assign(static_cast<size_t>(m + 1), 0u);
  for (int64_t r = 0; r < m; ++r) {
    l.outlier_row_offsets[r + 1] =
        l.outlier_row_offsets[r] + static_cast<uint32_t>(loop.outliers[r].size());
    for (const auto& [col, value] : loop.outliers[r]) {
      if (l.wide_column_ids()) {
        l.outlier_cols_u32.push_back(col);
      } else {
        l.outlier_cols_u16.push_back(static_cast<uint16_t>(col));
      }
      l.outlier_values.push_back(value);
    }
  }
  l.perm = prep.perm;

  result.dequantized.resize(static_cast<size_t>(m * n));
  for (int64_t r = 0; r < m; ++r) {
    for (int64_t j = 0; j < n; ++j) result.dequantized[r * n + l.perm[j]] = loop.w_hat[r * n + j];
  }
  result.num_outliers = l.num_outliers();
  result.outlier_fraction = static_cast<double>(result.num_outliers) / (static_cast<double>(m) * n);
  result.formula_bits = SpqrFormulaBitsPerParameter(l);
  result.real_bits = SpqrRealBitsPerParameter(l);
  if (want_error) {
    const float* hp = is_rtn ? h : prep.permuted_h.data();
    result.hessian_error = HessianWeighted(original.data(), loop.w_hat.data(), hp, m, n);
    const double base = HessianWeighted(original.data(), nullptr, hp, m, n);
    result.relative_hessian_error = base > 0 ? result.hessian_error / base : 0.0;
  } else {
    result.hessian_error = std::nan("");
    result.relative_hessian_error = std::nan("");
  }
  return result;
}

}  // namespace spqr
