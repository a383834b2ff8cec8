// Group statistics of the SpQR / GPTQ / RTN quantizers: the first-level asymmetric min-max fit of
// one row of a column group, scalar quantization, and the bilevel (second-level) quantization of
// a column group's m scales or m zeros in blocks of beta2 output rows.
#pragma once

#include <cmath>
#include <cstdint>

#include "engine/format/spqr_layer.h"

namespace spqr {

// kSpqr: min-max over the values as they are, zero = -min/scale NOT rounded (SpQR, small groups).
// kGptq: the range is widened to include 0 and the zero is rounded to an integer (GPTQ's own
//        quantizer; used by the GPTQ and RTN baselines).
// Both: when min == max the range [-1, 1] is used.
enum class FirstLevelStyle { kSpqr, kGptq };

struct ScaleZero {
  float scale = 1.0f;
  float zero = 0.0f;
};

// Fits `count` values v[0], v[stride], ... with maxq = 2^bits - 1 levels.
ScaleZero FitMinMax(const float* v, int64_t count, int64_t stride, int maxq, FirstLevelStyle style);

// The quantizer's divisor floor (the reference clamps the scale to >= 1e-9 before dividing).
inline constexpr float kScaleFloor = 1e-9f;

// q = clamp(round_half_even(w / max(scale, 1e-9) + zero), 0, maxq), in fp32.
inline uint32_t QuantizeToCode(float w, float scale, float zero, int maxq) {
  const float x = w / std::fmax(scale, kScaleFloor) + zero;
  const float q = std::nearbyint(x);  // default rounding mode: to nearest, ties to even
  if (!(q > 0.0f)) return 0u;         // also maps NaN to 0
  if (q >= static_cast<float>(maxq)) return static_cast<uint32_t>(maxq);
  return static_cast<uint32_t>(q);
}

// fp32 -> fp16 that saturates to +-65504 instead of overflowing to infinity (statistics must stay
// finite); NaN becomes 0.
uint16_t F32ToF16Saturating(float f);

// Second-level quantization of `values[0..m)` (the first-level scales or zeros of one column
// group) in blocks of beta2 consecutive rows with `bits`-bit asymmetric min-max (unrounded zero).
// Block b's fp16 (scale, zero) go to params[b * params_stride + 0/1]; codes[r] and the decoded
// values decoded[r] = DequantSecondLevel(codes[r], scale, zero) are written for every row. Codes
// are computed against the fp16-rounded parameters, so decoded values are what the decoder sees.
// A block whose values are all equal is stored exactly as scale 1, zero -value (the [-1, 1] rule
// would decode a constant 0.01 to ~0.14); a block whose zero would not fit fp16 widens its range to
// include 0.
void QuantizeSecondLevel(const float* values, int64_t m, int beta2, int bits, uint8_t* codes,
                         uint16_t* params, int64_t params_stride, float* decoded);

}  // namespace spqr
