#include "quantizer/group_stats.h"

#include <algorithm>

#include "engine/util/half.h"

namespace spqr {

ScaleZero FitMinMax(const float* v, int64_t count, int64_t stride, int maxq,
                    FirstLevelStyle style) {
  float lo = v[0], hi = v[0];
  for (int64_t k = 1; k < count; ++k) {
    lo = std::min(lo, v[k * stride]);
    hi = std::max(hi, v[k * stride]);
  }
  if (style == FirstLevelStyle::kGptq) {
    lo = std::min(lo, 0.0f);
    hi = std::max(hi, 0.0f);
  }
  if (lo == hi) {
    lo = -1.0f;
    hi = 1.0f;
  }
  ScaleZero sz;
  sz.scale = (hi - lo) / static_cast<float>(maxq);
  sz.zero = -lo / sz.scale;
  if (style == FirstLevelStyle::kGptq) sz.zero = std::nearbyint(sz.zero);
  return sz;
}

uint16_t F32ToF16Saturating(float f) {
  if (std::isnan(f)) return 0;
  return F32ToF16(std::clamp(f, -65504.0f, 65504.0f));
}

namespace {

bool F16UsableScale(uint16_t h) { return (h & 0x7fffu) != 0 && (h & 0x7c00u) != 0x7c00u; }

}  // namespace

void QuantizeSecondLevel(const float* values, int64_t m, int beta2, int bits, uint8_t* codes,
                         uint16_t* params, int64_t params_stride, float* decoded) {
  const int maxq = (1 << bits) - 1;
  for (int64_t b0 = 0, block = 0; b0 < m; b0 += beta2, ++block) {
    const int64_t b1 = std::min<int64_t>(m, b0 + beta2);
    float lo = values[b0], hi = values[b0];
    for (int64_t r = b0 + 1; r < b1; ++r) {
      lo = std::min(lo, values[r]);
      hi = std::max(hi, values[r]);
    }
    uint16_t hs, hz;
    if (lo == hi) {
      hs = F32ToF16(1.0f);
      hz = F32ToF16Saturating(-lo);
    } else {
      float s = (hi - lo) / static_cast<float>(maxq);
      hs = F32ToF16Saturating(s);
      const float z = -lo / s;
      hz = F32ToF16(z);
      if (!F16UsableScale(hs) || (hz & 0x7c00u) == 0x7c00u || std::fabs(z) > 65504.0f) {
        // Range far from 0 relative to its width (or tiny): include 0 so the zero stays in fp16.
        lo = std::min(lo, 0.0f);
        hi = std::max(hi, 0.0f);
        s = (hi - lo) / static_cast<float>(maxq);
        hs = F32ToF16Saturating(s);
        if ((hs & 0x7fffu) == 0) hs = 1;  // smallest subnormal; values are ~0 anyway
        hz = F32ToF16Saturating(-lo / s);
      }
    }
    params[block * params_stride + 0] = hs;
    params[block * params_stride + 1] = hz;
    const float fs = F16ToF32(hs), fz = F16ToF32(hz);
    for (int64_t r = b0; r < b1; ++r) {
      const uint32_t q = QuantizeToCode(values[r], fs, fz, maxq);
      codes[r] = static_cast<uint8_t>(q);
      decoded[r] = DequantSecondLevel(q, hs, hz);
    }
  }
}

}  // namespace spqr
