// Arithmetic shared by the fused batch products of "fp16 arithmetic" layers (the format's batch-1
// product, engine/format/spqr_matmul.cc, and the CPU kernel's fused tiles,
// engine/backend/cpu/spqr_linear.cc), which must give the same bits: the dense weights
// h(s * h(q - z)) 8 lanes at a time, and the sparse term of an outlier.
#pragma once

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#endif

#include "engine/format/spqr_layer.h"
#include "engine/util/half.h"

namespace spqr {

// What an outlier adds to the dense weight w of an "fp16 arithmetic" layer, whose decoded weight
// is h(w + residual): the fused products add (h(w + residual) - w) * x as a separate sparse term.
inline float OutlierCorrectionF16(float w, float residual) { return RoundToF16(w + residual) - w; }

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define SPQR_FUSED_F16_SIMD 1
// DequantWeightF16 on 8 lanes: h(s * h(q - z)) (each step one fp32 operation, then rounded to
// fp16 and back, exactly as the scalar form).
inline __m256 DequantWeightF16x8(__m256 q, __m256 s, __m256 z) {
  constexpr int kRound = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
  const __m256 t = _mm256_cvtph_ps(_mm256_cvtps_ph(_mm256_sub_ps(q, z), kRound));
  return _mm256_cvtph_ps(_mm256_cvtps_ph(_mm256_mul_ps(s, t), kRound));
}
#endif

}  // namespace spqr
