// A minimal fp32 SIMD vector for the CPU backend's inner loops, with three implementations chosen
// at compile time: AVX-512 (16 lanes), AVX2+FMA (8 lanes) and a portable scalar one (8 lanes).
// Every op is deterministic for a given build: the same inputs give the same bits whatever the
// surrounding batch, which the backend relies on for batch-independent results.
#pragma once

#include <cstddef>
#include <cstdint>

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>
#endif

#include "engine/model/tensor.h"
#include "engine/util/half.h"

namespace spqr::cpu {

#if defined(__AVX512F__)

// The maskz_ forms with an all-ones mask below compute the same as the plain intrinsics; GCC 12's
// plain ones pass an undefined pass-through vector that trips -Wuninitialized.
struct VecF {
  static constexpr int kLanes = 16;
  __m512 v;
};
inline VecF VZero() { return {_mm512_setzero_ps()}; }
inline VecF VSet1(float x) { return {_mm512_set1_ps(x)}; }
inline VecF VLoad(const float* p) { return {_mm512_loadu_ps(p)}; }
inline void VStore(float* p, VecF a) { _mm512_storeu_ps(p, a.v); }
inline VecF VAdd(VecF a, VecF b) { return {_mm512_add_ps(a.v, b.v)}; }
inline VecF VMul(VecF a, VecF b) { return {_mm512_mul_ps(a.v, b.v)}; }
// a * b + c with a single rounding.
inline VecF VFma(VecF a, VecF b, VecF c) { return {_mm512_fmadd_ps(a.v, b.v, c.v)}; }
// Horizontal sum in a fixed tree order.
inline float VReduceAdd(VecF a) {
  __m256 lo = _mm256_castpd_ps(_mm512_maskz_extractf64x4_pd(0xff, _mm512_castps_pd(a.v), 0));
  __m256 hi = _mm256_castpd_ps(_mm512_maskz_extractf64x4_pd(0xff, _mm512_castps_pd(a.v), 1));
  __m256 s8 = _mm256_add_ps(lo, hi);
  __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
  __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
  __m128 s1 = _mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1));
  return _mm_cvtss_f32(s1);
}

#elif defined(__AVX2__) && defined(__FMA__)

struct VecF {
  static constexpr int kLanes = 8;
  __m256 v;
};
inline VecF VZero() { return {_mm256_setzero_ps()}; }
inline VecF VSet1(float x) { return {_mm256_set1_ps(x)}; }
inline VecF VLoad(const float* p) { return {_mm256_loadu_ps(p)}; }
inline void VStore(float* p, VecF a) { _mm256_storeu_ps(p, a.v); }
inline VecF VAdd(VecF a, VecF b) { return {_mm256_add_ps(a.v, b.v)}; }
inline VecF VMul(VecF a, VecF b) { return {_mm256_mul_ps(a.v, b.v)}; }
inline VecF VFma(VecF a, VecF b, VecF c) { return {_mm256_fmadd_ps(a.v, b.v, c.v)}; }
inline float VReduceAdd(VecF a) {
  __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(a.v), _mm256_extractf128_ps(a.v, 1));
  __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
  __m128 s1 = _mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1));
  return _mm_cvtss_f32(s1);
}

#else  // portable fallback

struct VecF {
  static constexpr int kLanes = 8;
  float v[8];
};
inline VecF VZero() { return VecF{}; }
inline VecF VSet1(float x) {
  VecF r;
  for (int i = 0; i < 8; ++i) r.v[i] = x;
  return r;
}
inline VecF VLoad(const float* p) {
  VecF r;
  for (int i = 0; i < 8; ++i) r.v[i] = p[i];
  return r;
}
inline void VStore(float* p, VecF a) {
  for (int i = 0; i < 8; ++i) p[i] = a.v[i];
}
inline VecF VAdd(VecF a, VecF b) {
  for (int i = 0; i < 8; ++i) a.v[i] += b.v[i];
  return a;
}
inline VecF VMul(VecF a, VecF b) {
  for (int i = 0; i < 8; ++i) a.v[i] *= b.v[i];
  return a;
}
inline VecF VFma(VecF a, VecF b, VecF c) {
  for (int i = 0; i < 8; ++i) c.v[i] = __builtin_fmaf(a.v[i], b.v[i], c.v[i]);
  return c;
}
inline float VReduceAdd(VecF a) {
  float s4[4], s2[2];
  for (int i = 0; i < 4; ++i) s4[i] = a.v[i] + a.v[i + 4];
  for (int i = 0; i < 2; ++i) s2[i] = s4[i] + s4[i + 2];
  return s2[0] + s2[1];
}

#endif

constexpr int kLanes = VecF::kLanes;

// Sum of 16 floats in VReduceAdd's AVX-512 tree order: (i, i+8), then (i, i+4), (i, i+2), (0, 1).
// The kernels that keep 16 partial sums in memory or in a portable reference use it, so their
// vector and scalar forms round alike.
inline float TreeSum16(const float* l) {
  float s8[8], s4[4], s2[2];
  for (int i = 0; i < 8; ++i) s8[i] = l[i] + l[i + 8];
  for (int i = 0; i < 4; ++i) s4[i] = s8[i] + s8[i + 4];
  for (int i = 0; i < 2; ++i) s2[i] = s4[i] + s4[i + 2];
  return s2[0] + s2[1];
}

// Rounds n up to a multiple of the vector width.
inline int64_t PadToLanes(int64_t n) { return (n + kLanes - 1) / kLanes * kLanes; }

// Dot product of two fp32 arrays of length n: vector body, scalar tail, fixed order.
inline float DotF32(const float* a, const float* b, int64_t n) {
  VecF acc = VZero();
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) acc = VFma(VLoad(a + i), VLoad(b + i), acc);
  float s = VReduceAdd(acc);
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

// dst[i] = float(src[i]) for the three dense weight dtypes. Exact conversions (16-bit floats are
// all representable in fp32), so the SIMD and scalar paths agree bit for bit, except that F16C
// quiets signalling-NaN payloads.
inline void F16ToF32Row(const uint16_t* src, float* dst, int64_t n) {
  int64_t i = 0;
#if defined(__AVX512F__)
  for (; i + 16 <= n; i += 16) {
    __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i));
    _mm512_storeu_ps(dst + i, _mm512_maskz_cvtph_ps(0xffff, h));
  }
#elif defined(__F16C__)
  for (; i + 8 <= n; i += 8) {
    __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i));
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(h));
  }
#endif
  for (; i < n; ++i) dst[i] = F16ToF32(src[i]);
}

inline void Bf16ToF32Row(const uint16_t* src, float* dst, int64_t n) {
  int64_t i = 0;
#if defined(__AVX512F__)
  for (; i + 16 <= n; i += 16) {
    __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i));
    __m512i w = _mm512_maskz_slli_epi32(0xffff, _mm512_maskz_cvtepu16_epi32(0xffff, h), 16);
    _mm512_storeu_ps(dst + i, _mm512_castsi512_ps(w));
  }
#elif defined(__AVX2__)
  for (; i + 8 <= n; i += 8) {
    __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i));
    __m256i w = _mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16);
    _mm256_storeu_ps(dst + i, _mm256_castsi256_ps(w));
  }
#endif
  for (; i < n; ++i) dst[i] = Bf16ToF32(src[i]);
}

// dst[0..n) = float(src[offset .. offset+n)) where src holds elements of `dtype` (F32/F16/BF16;
// the backend rejects other dtypes when it is created).
inline void ConvertToF32(DType dtype, const void* src, int64_t offset, int64_t n, float* dst) {
  switch (dtype) {
    case DType::kF16:
      F16ToF32Row(static_cast<const uint16_t*>(src) + offset, dst, n);
      return;
    case DType::kBF16:
      Bf16ToF32Row(static_cast<const uint16_t*>(src) + offset, dst, n);
      return;
    default: {
      const float* f = static_cast<const float*>(src) + offset;
      for (int64_t i = 0; i < n; ++i) dst[i] = f[i];
      return;
    }
  }
}

// Loads kLanes consecutive elements of a `D`-typed array starting at `index`, converted to fp32
// (the same values ConvertToF32 produces), without going through memory.
template <DType D>
inline VecF VLoadConverted(const void* base, int64_t index) {
  if constexpr (D == DType::kF32) {
    return VLoad(static_cast<const float*>(base) + index);
  } else {
    const uint16_t* src = static_cast<const uint16_t*>(base) + index;
#if defined(__AVX512F__)
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src));
    if constexpr (D == DType::kF16) {
      return {_mm512_maskz_cvtph_ps(0xffff, h)};
    } else {
      return {_mm512_castsi512_ps(
          _mm512_maskz_slli_epi32(0xffff, _mm512_maskz_cvtepu16_epi32(0xffff, h), 16))};
    }
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src));
    if constexpr (D == DType::kF16) {
      return {_mm256_cvtph_ps(h)};
    } else {
      return {_mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))};
    }
#else
    float tmp[kLanes];
    ConvertToF32(D, src, 0, kLanes, tmp);
    return VLoad(tmp);
#endif
  }
}

}  // namespace spqr::cpu
