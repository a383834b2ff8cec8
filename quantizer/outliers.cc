#include "quantizer/outliers.h"

#include <algorithm>
#include <limits>
#include <vector>

#include "quantizer/group_stats.h"

namespace spqr {
namespace {

// quantize-dequantize with unquantized stats (the fitting objective, not the stored decode).
float DequantWeightForFit(float w, ScaleZero sz, int maxq) {
  const uint32_t q = QuantizeToCode(w, sz.scale, sz.zero, maxq);
  return sz.scale * (static_cast<float>(q) - sz.zero);
}

// Hessian-weighted squared error of quantize-dequantize(v) over i != skip with the given stats.
double GroupError(const float* v, const float* d, int count, int skip, ScaleZero sz, int maxq) {
  double err = 0.0;
  for (int i = 0; i < count; ++i) {
    if (i == skip) continue;
    const float q = DequantWeightForFit(v[i], sz, maxq);
    const float e = (q - v[i]) / d[i];
    err += static_cast<double>(e) * e;
  }
  return err;
}

}  // namespace

void LeaveOneOutErrorReduction(const float* v, const float* d, int count, int wbits,
                               double* reduction) {
  const int maxq = (1 << wbits) - 1;
  const ScaleZero all = FitMinMax(v, count, 1, maxq, FirstLevelStyle::kSpqr);
  // Each value's weighted error under the all-values fit, computed once: leaving out a value that
  // holds neither extreme keeps that fit, so E_without_k is these errors summed over i != k (in
  // the same order and arithmetic as GroupError, so bit for bit its result, without re-quantizing
  // the group count times).
  std::vector<float> e(static_cast<size_t>(count));
  for (int i = 0; i < count; ++i) e[i] = (DequantWeightForFit(v[i], all, maxq) - v[i]) / d[i];
  double base = 0.0;
  for (int i = 0; i < count; ++i) base += static_cast<double>(e[i]) * e[i];
  if (count == 1) {  // leaving the only value out leaves nothing to quantize
    reduction[0] = base;
    return;
  }
  // The min and max of "all but k" only change when k holds the (first) min or max, so keep the
  // two smallest and two largest.
  int imin = 0, imax = 0;
  for (int i = 1; i < count; ++i) {
    if (v[i] < v[imin]) imin = i;
    if (v[i] > v[imax]) imax = i;
  }
  float second_min = std::numeric_limits<float>::infinity();
  float second_max = -std::numeric_limits<float>::infinity();
  for (int i = 0; i < count; ++i) {
    if (i != imin) second_min = std::min(second_min, v[i]);
    if (i != imax) second_max = std::max(second_max, v[i]);
  }
  for (int k = 0; k < count; ++k) {
    if (k != imin && k != imax) {
      // The others' extremes are v[imin] and v[imax]: FitMinMax on them gives `all` exactly.
      double without = 0.0;
      for (int i = 0; i < count; ++i) {
        if (i != k) without += static_cast<double>(e[i]) * e[i];
      }
      reduction[k] = base - without;
      continue;
    }
    // Fit on the other values exactly as FitMinMax would (same arithmetic) by passing the two
    // extremes of the remaining values.
    const float lo = (k == imin) ? second_min : v[imin];
    const float hi = (k == imax) ? second_max : v[imax];
    const float ends[2] = {lo, hi};
    const ScaleZero sz = FitMinMax(ends, 2, 1, maxq, FirstLevelStyle::kSpqr);
    reduction[k] = base - GroupError(v, d, count, k, sz, maxq);
  }
}

int CleanGroupRowForFitting(const float* v, const float* d, int count, int wbits, double threshold,
                            float* cleaned) {
  std::vector<double> reduction(static_cast<size_t>(count));
  LeaveOneOutErrorReduction(v, d, count, wbits, reduction.data());
  std::vector<uint8_t> candidate(static_cast<size_t>(count));
  for (int k = 0; k < count; ++k) candidate[k] = reduction[k] > threshold;
  auto apply = [&]() {
    double sum = 0.0;
    int kept = 0;
    for (int k = 0; k < count; ++k) {
      if (!candidate[k]) {
        sum += v[k];
        ++kept;
      }
    }
    const float mean = static_cast<float>(sum / std::max(kept, 1));
    for (int k = 0; k < count; ++k) cleaned[k] = candidate[k] ? mean : v[k];
    return count - kept;
  };
  int candidates = apply();
  // Leaving any weight out also saves its own error, so next to a huge weight nearly all weights
  // can pass the test; when that leaves a constant row the fit would fall back to the range
  // [-1, 1] and wreck the group. Then treat only the weight with the largest gain as a candidate.
  const auto [lo, hi] = std::minmax_element(cleaned, cleaned + count);
  const auto [vlo, vhi] = std::minmax_element(v, v + count);
  if (candidates > 0 && count > 2 && *lo == *hi && *vlo != *vhi) {
    const int64_t best = std::max_element(reduction.begin(), reduction.end()) - reduction.begin();
    for (int k = 0; k < count; ++k) candidate[k] = (k == best);
    candidates = apply();
  }
  return candidates;
}

}  // namespace spqr
