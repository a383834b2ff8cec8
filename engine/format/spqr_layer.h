// The packed SpQR representation of one linear layer ("spqr-format 1", docs/model-format.md).
// This module is shared by the quantizer (which builds layers) and the engine (which loads and
// runs them): every decode path must produce exactly DecodeWeight() of this header.
//
// Notation: W is [m = out_features][n = in_features]. The quantizer permutes the input columns
// (act-order): permuted column j is original column perm[j]. Codes, statistics and outliers are
// stored in PERMUTED column order; the dense matrix produced by DequantizeSpqrLayer() is in
// ORIGINAL column order. Column groups are beta1 consecutive permuted columns (G = n / beta1
// groups); second-level blocks are beta2 consecutive output rows (the last block may be shorter).
//
// Decoding, evaluated in fp32 with one rounding per operation (no fused multiply-add):
//   stats (stats_bits < 16), block b = r / beta2, second-level values s = second_level[b][g][0..3]:
//     scale(r,g) = f(s[0]) * (float(scale_code[r][g]) - f(s[1]))
//     zero(r,g)  = f(s[2]) * (float(zero_code[r][g])  - f(s[3]))
//   stats (stats_bits == 16): scale(r,g) = f(scale_f16[r][g]), zero(r,g) = f(zero_f16[r][g])
//   weight: w(r,j) = scale(r, j / beta1) * (float(code[r][j]) - zero(r, j / beta1))
//   outlier at (r,j): w(r,j) = w(r,j) + f(value)      (value = fp16 residual; ADD semantics)
//   W_hat[r][perm[j]] = w(r,j)
// where f() is the exact fp16 -> fp32 conversion.
//
// Decode variant "fp16 arithmetic" (decode_arithmetic == kFp16, the decoders of the authors'
// transformers layout, written by spqr-convert): the same expressions with every step rounded to
// fp16 (h = RoundToF16, engine/util/half.h):
//   scale(r,g) = h(f(s[0]) * h(float(scale_code) - f(s[1])))     (likewise the zero)
//   w(r,j)     = h(scale * h(float(code) - zero));   outlier: w(r,j) = h(w(r,j) + f(value))
// (fp16 statistics are used as stored). The variant is per layer: every decode path either
// implements it or refuses the layer, never decodes it the fp32 way.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/util/half.h"

namespace spqr {

inline constexpr int kSpqrFormatVersion = 1;
// stats_bits value meaning "first-level statistics stored directly as fp16, no second level".
inline constexpr int kFp16Stats = 16;

// The arithmetic a layer's decode is defined with (spqr_meta slot 10; docs/model-format.md
// section 3). kFp32 is what spqr-quantize writes; kFp16 reproduces the authors' decoders bit for
// bit (spqr-convert).
enum class SpqrDecodeArithmetic : uint32_t { kFp32 = 0, kFp16 = 1 };

struct PackedSpqrLayer {
  int64_t out_features = 0;  // m
  int64_t in_features = 0;   // n
  int wbits = 0;             // 2..8
  int beta1 = 0;             // columns per first-level group; divides n
  int beta2 = 0;             // rows per second-level block (>= 1; unused when stats_bits == 16)
  int stats_bits = 0;        // 3..8, or 16 (kFp16Stats)
  SpqrDecodeArithmetic decode_arithmetic = SpqrDecodeArithmetic::kFp32;

  // Weight codes: m bit rows of n codes (wbits each), permuted column order.
  std::vector<uint32_t> weight_codes;
  // stats_bits < 16: m bit rows of G codes (stats_bits each), and the second-level fp16 values
  // [num_row_blocks][G][4] = {scale of scales, zero of scales, scale of zeros, zero of zeros}.
  std::vector<uint32_t> scale_codes;
  std::vector<uint32_t> zero_codes;
  std::vector<uint16_t> second_level;
  // stats_bits == 16: first-level statistics [m][G] as fp16.
  std::vector<uint16_t> scale_f16;
  std::vector<uint16_t> zero_f16;
  // Outliers, CSR by output row. Column ids are PERMUTED positions j (strictly increasing within a
  // row); 16-bit when n <= 65535, otherwise 32-bit (exactly one of the two is used). Values are
  // fp16 residuals added to the dense decode.
  std::vector<uint32_t> outlier_row_offsets;  // m + 1, offsets[0] == 0
  std::vector<uint16_t> outlier_cols_u16;
  std::vector<uint32_t> outlier_cols_u32;
  std::vector<uint16_t> outlier_values;
  // perm[j] = original input column of permuted column j (a permutation of 0..n-1).
  std::vector<uint32_t> perm;

  int64_t num_groups() const { return beta1 > 0 ? in_features / beta1 : 0; }
  int64_t num_row_blocks() const { return beta2 > 0 ? (out_features + beta2 - 1) / beta2 : 0; }
  int64_t num_outliers() const { return static_cast<int64_t>(outlier_values.size()); }
  bool wide_column_ids() const { return in_features > 65535; }
  bool fp16_arithmetic() const { return decode_arithmetic == SpqrDecodeArithmetic::kFp16; }
  uint32_t outlier_col(int64_t k) const {
    return wide_column_ids() ? outlier_cols_u32[k] : outlier_cols_u16[k];
  }
};

// ---- Shared decode arithmetic (the quantizer uses these very functions) ----

// One second-level dequantization: s * (float(code) - z) with s, z fp16.
inline float DequantSecondLevel(uint32_t code, uint16_t s_f16, uint16_t z_f16) {
  const float t = static_cast<float>(code) - F16ToF32(z_f16);
  return F16ToF32(s_f16) * t;
}
// One first-level (weight) dequantization: scale * (float(code) - zero).
inline float DequantWeight(uint32_t code, float scale, float zero) {
  const float t = static_cast<float>(code) - zero;
  return scale * t;
}

// The same two steps in the "fp16 arithmetic" variant: every operation rounded to fp16.
inline float DequantSecondLevelF16(uint32_t code, uint16_t s_f16, uint16_t z_f16) {
  const float t = RoundToF16(static_cast<float>(code) - F16ToF32(z_f16));
  return RoundToF16(F16ToF32(s_f16) * t);
}
inline float DequantWeightF16(uint32_t code, float scale, float zero) {
  const float t = RoundToF16(static_cast<float>(code) - zero);
  return RoundToF16(scale * t);
}
// A decoded weight plus its outlier residual, in the layer's arithmetic.
inline float AddOutlier(bool fp16_arithmetic, float w, float residual) {
  return fp16_arithmetic ? RoundToF16(w + residual) : w + residual;
}

// The first-level statistics of (row r, group g) as the decoder sees them (in the layer's decode
// arithmetic).
struct GroupStats {
  float scale;
  float zero;
};
GroupStats DecodeGroupStats(const PackedSpqrLayer& layer, int64_t r, int64_t g);

// ---- Validation, decoding, accounting ----

// Checks parameter ranges, array sizes against the shape, that perm is a permutation, that the CSR
// structure is consistent (monotone offsets, column ids in range and strictly increasing per row),
// that bit-row padding is zero and that all fp16 values are finite. `name` prefixes messages.
absl::Status ValidateSpqrLayer(const PackedSpqrLayer& layer, const std::string& name);

// The reference decoder: dense W_hat [m][n] in ORIGINAL column order (row-major fp32).
// Validates first.
absl::StatusOr<std::vector<float>> DequantizeSpqrLayer(const PackedSpqrLayer& layer);

// Decodes permuted row r into out[0..n): out[j] = w(r, j) including outliers. No validation.
void DecodePermutedRow(const PackedSpqrLayer& layer, int64_t r, float* out);

// The same decode in steps, for kernels that walk many rows (bit-identical results):
// second-level values of row block `block` converted to fp32 (G * 4 floats; stats_bits < 16 only),
void ConvertBlockSecondLevel(const PackedSpqrLayer& layer, int64_t block, float* out);
// row r's first-level statistics for all G groups (block_second: the converted values of block
// r / beta2, ignored for fp16 statistics; the layer's decode arithmetic),
void DecodeRowStats(const PackedSpqrLayer& layer, int64_t r, const float* block_second,
                    float* scale, float* zero);
// and row r's weights from those statistics (codes: scratch of n bytes; the layer's decode
// arithmetic, outliers included).
void DecodePermutedRowWithStats(const PackedSpqrLayer& layer, int64_t r, const float* scale,
                                const float* zero, uint8_t* codes, float* out);

// The paper's average bits per parameter:
//   b_w + (b_s + b_z)/beta1 + 64/(beta1*beta2) + 32*r_o      (stats_bits < 16)
//   b_w + 32/beta1 + 32*r_o                                  (stats_bits == 16)
// r_o = outlier fraction.
double SpqrFormulaBitsPerParameter(int wbits, int beta1, int beta2, int stats_bits,
                                   double outlier_fraction);
double SpqrFormulaBitsPerParameter(const PackedSpqrLayer& layer);
// Bytes of all arrays of the layer (codes, statistics, outliers, offsets, permutation); the on-disk
// size adds only the per-layer metadata tensor and the safetensors header.
int64_t SpqrLayerPayloadBytes(const PackedSpqrLayer& layer);
// 8 * SpqrLayerPayloadBytes / (m * n).
double SpqrRealBitsPerParameter(const PackedSpqrLayer& layer);

}  // namespace spqr
