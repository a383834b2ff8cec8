// Quantizes one linear layer W [m out x n in] into the packed SpQR format, with SpQR (GPTQ + small
// groups + bilevel statistics + outliers), plain GPTQ, or RTN. All three share one column loop and
// one output format, so their comparisons are fair (docs/model-format.md, "Methods").
#pragma once

#include <atomic>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/format/spqr_layer.h"

namespace spqr {

struct SpqrLayerConfig {
  // kSpqr: SpQR as in docs/spqr-method.md (min-max without zero-in-range, unrounded zero,
  //        leave-one-out fitting and the e^2 > T outlier test when tau is finite).
  // kGptq: GPTQ with GPTQ's own quantizer (0 forced into the range, rounded zero); no outliers.
  // kRtn:  round-to-nearest with the GPTQ-style quantizer, no Hessian (h may be null); no outliers.
  enum class Method { kSpqr, kGptq, kRtn };
  Method method = Method::kSpqr;
  int wbits = 3;       // 2..8
  int beta1 = 16;      // columns per statistics group; 0 = one group per row (beta1 = n)
  int beta2 = 16;      // rows per second-level block (>= 1); unused when stats_bits == 16
  int stats_bits = 3;  // 3..8 (bilevel) or 16 (fp16 statistics)
  double tau = std::numeric_limits<double>::infinity();  // outlier threshold; inf = no outliers
  double lambda = 1.0;                                   // damping relative to mean(diag H)
  bool act_order = true;
  int block_size = 128;  // GPTQ lazy-batch width (rounded to a multiple of beta1 when beta1 < it)
  bool compute_hessian_error = true;
  // When set and it becomes non-zero (a signal number), QuantizeLayer returns CANCELLED at the
  // next column block, so an interrupted job does not wait for a whole large layer.
  const std::atomic<int>* stop = nullptr;
};

// "spqr", "gptq", "rtn".
const char* MethodName(SpqrLayerConfig::Method method);

// Largest beta1 / beta2 accepted: far beyond any real layer width, small enough that products of
// group sizes and counts stay exact.
inline constexpr int kMaxGroupSize = 1 << 20;

// Checks the parts of the configuration that do not depend on a layer's shape (ranges of wbits,
// beta1, beta2, stats_bits, tau, lambda, and method combinations); errors name the parameter,
// the value and the valid range.
absl::Status ValidateLayerOptions(const SpqrLayerConfig& config);

// ValidateLayerOptions() plus the checks against a layer of shape m x n (beta1 divides n).
absl::Status ValidateLayerConfig(const SpqrLayerConfig& config, int64_t m, int64_t n);

struct LayerQuantizationResult {
  PackedSpqrLayer packed;
  // The weights the column loop actually used, [m][n] in original column order. Equal bit for bit
  // to DequantizeSpqrLayer(packed) (tested).
  std::vector<float> dequantized;
  int64_t num_outliers = 0;
  double outlier_fraction = 0.0;
  double outlier_threshold = 0.0;  // T = tau * mean_j(Var_i(W_ij) / d_j^2); inf when none
  int64_t num_dead_inputs = 0;
  // tr((W - W_hat) H (W - W_hat)^T) with the undamped H, and that divided by tr(W H W^T).
  // NaN when H is absent or compute_hessian_error is off.
  double hessian_error = 0.0;
  double relative_hessian_error = 0.0;
  double formula_bits = 0.0;  // SpqrFormulaBitsPerParameter(packed)
  double real_bits = 0.0;     // SpqrRealBitsPerParameter(packed)
};

// w: [m][n] row-major; h: [n][n] row-major (may be null only for kRtn). threads: OpenMP threads
// (<= 0: all); outside a parallel region this also sets Eigen's (process-wide) thread count.
// Deterministic for given inputs, config and thread count. May be called from inside a parallel
// region with threads == 1 (QuantizeModel runs a block's seven layers that way): everything is
// serial then, and the result equals a call with threads == 1 from outside.
absl::StatusOr<LayerQuantizationResult> QuantizeLayer(const float* w, int64_t m, int64_t n,
                                                      const float* h, const SpqrLayerConfig& config,
                                                      int threads = 0);

}  // namespace spqr
