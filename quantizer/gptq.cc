#include "quantizer/gptq.h"

#include <omp.h>

#include <Eigen/Core>
#include <algorithm>
#include <cmath>

#include "engine/format/spqr_layer.h"
#include "engine/util/half.h"
#include "quantizer/outliers.h"

namespace spqr {
namespace {

using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// Fits the statistics of group g (permuted columns [c, c + beta1)) on the current, already
// error-compensated weights and writes the decoded per-row scale/zero the loop must use.
void FitGroup(const float* w, const ColumnLoopParams& p, int64_t g, ColumnLoopOutput* out,
              std::vector<float>* scale, std::vector<float>* zero) {
  const int64_t m = p.m, n = p.n, c = g * p.beta1, groups = n / p.beta1;
  const int maxq = (1 << p.wbits) - 1;
  std::vector<float> raw_scale(static_cast<size_t>(m)), raw_zero(static_cast<size_t>(m));
  int64_t candidates = 0;
  const bool clean = std::isfinite(p.threshold);
#pragma omp parallel for num_threads(p.threads) schedule(static) reduction(+ : candidates)
  for (int64_t r = 0; r < m; ++r) {
    const float* v = w + r * n + c;
    ScaleZero sz;
    if (clean) {
      std::vector<float> cleaned(static_cast<size_t>(p.beta1));
      candidates += CleanGroupRowForFitting(v, p.inv_chol_diag + c, p.beta1, p.wbits, p.threshold,
                                            cleaned.data());
      sz = FitMinMax(cleaned.data(), p.beta1, 1, maxq, p.style);
    } else {
      sz = FitMinMax(v, p.beta1, 1, maxq, p.style);
    }
    raw_scale[r] = sz.scale;
    raw_zero[r] = sz.zero;
  }
  out->num_fit_candidates += candidates;
  if (p.stats_bits == kFp16Stats) {
    for (int64_t r = 0; r < m; ++r) {
      const uint16_t hs = F32ToF16Saturating(raw_scale[r]);
      const uint16_t hz = F32ToF16Saturating(raw_zero[r]);
      out->scale_f16[r * groups + g] = hs;
      out->zero_f16[r * groups + g] = hz;
      (*scale)[r] = F16ToF32(hs);
      (*zero)[r] = F16ToF32(hz);
    }
    return;
  }
  std::vector<uint8_t> codes(static_cast<size_t>(m));
  uint16_t* params = out->second_level.data() + g * 4;
  const int64_t stride = groups * 4;
  QuantizeSecondLevel(raw_scale.data(), m, p.beta2, p.stats_bits, codes.data(), params, stride,
                      scale->data());
  for (int64_t r = 0; r < m; ++r) out->scale_codes[r * groups + g] = codes[r];
  QuantizeSecondLevel(raw_zero.data(), m, p.beta2, p.stats_bits, codes.data(), params + 2, stride,
                      zero->data());
  for (int64_t r = 0; r < m; ++r) out->zero_codes[r * groups + g] = codes[r];
}

}  // namespace

void RunColumnLoop(float* w, const ColumnLoopParams& p, ColumnLoopOutput* out) {
  const int64_t m = p.m, n = p.n, groups = n / p.beta1;
  const int maxq = (1 << p.wbits) - 1;
  const bool compensate = p.inv_chol != nullptr;
  const bool outliers = std::isfinite(p.threshold);
  const float threshold = static_cast<float>(p.threshold);
  out->codes.assign(static_cast<size_t>(m * n), 0);
  out->w_hat.assign(static_cast<size_t>(m * n), 0.0f);
  out->outliers.assign(static_cast<size_t>(m), {});
  if (p.stats_bits == kFp16Stats) {
    out->scale_f16.assign(static_cast<size_t>(m * groups), 0);
    out->zero_f16.assign(static_cast<size_t>(m * groups), 0);
  } else {
    out->scale_codes.assign(static_cast<size_t>(m * groups), 0);
    out->zero_codes.assign(static_cast<size_t>(m * groups), 0);
    out->second_level.assign(static_cast<size_t>(((m + p.beta2 - 1) / p.beta2) * groups * 4), 0);
  }
  // Lazy-batch width: a multiple of beta1 when groups are narrower, so that every group's
  // statistics are fitted on fully updated columns.
  int64_t block = p.block_size;
  if (p.beta1 < block) block = (block / p.beta1) * p.beta1;
  std::vector<float> scale(static_cast<size_t>(m)), zero(static_cast<size_t>(m));
  RowMat err(m, block);
  Eigen::Map<RowMat> wm(w, m, n);

  for (int64_t b0 = 0; b0 < n; b0 += block) {
    if (p.stop != nullptr && p.stop->load() != 0) {
      out->stopped = true;
      return;
    }
    const int64_t b1 = std::min(n, b0 + block);
    for (int64_t c = b0; c < b1;) {
      if (c % p.beta1 == 0) FitGroup(w, p, c / p.beta1, out, &scale, &zero);
      const int64_t seg_end = std::min(b1, (c / p.beta1 + 1) * p.beta1);
      // Rows are independent between group starts: each row quantizes its columns and pushes its
      // own error forward inside the block.
#pragma omp parallel for num_threads(p.threads) schedule(static)
      for (int64_t r = 0; r < m; ++r) {
        float* row = w + r * n;
        const float s = scale[r], z = zero[r];
        for (int64_t j = c; j < seg_end; ++j) {
          const float x = row[j];
          const uint32_t q = QuantizeToCode(x, s, z, maxq);
          float wh = DequantWeight(q, s, z);
          const float d = compensate ? p.inv_chol_diag[j] : 1.0f;
          float e = (x - wh) / d;
          if (outliers && e * e > threshold) {
            // Keep the weight: store the fp16 residual to the chosen code's value (ADD semantics)
            // and use exactly what the decoder will reconstruct.
            const uint16_t residual = F32ToF16Saturating(x - wh);
            wh = wh + F16ToF32(residual);
            e = (x - wh) / d;
            out->outliers[r].emplace_back(static_cast<uint32_t>(j), residual);
          }
          out->codes[r * n + j] = static_cast<uint8_t>(q);
          out->w_hat[r * n + j] = wh;
          err(r, j - b0) = e;
          if (compensate) {
            const float* u = p.inv_chol + j * n;
            for (int64_t k = j + 1; k < b1; ++k) row[k] -= e * u[k];
          }
        }
      }
      c = seg_end;
    }
    if (compensate && b1 < n) {
      Eigen::Map<const RowMat> u(p.inv_chol, n, n);
      wm.rightCols(n - b1).noalias() -= err.leftCols(b1 - b0) * u.block(b0, b1, b1 - b0, n - b1);
    }
  }
}

}  // namespace spqr
