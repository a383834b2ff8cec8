#include "engine/format/spqr_layer.h"

#include <cmath>
#include <type_traits>

#include "absl/strings/str_cat.h"
#include "engine/format/bit_packing.h"

namespace spqr {
namespace {

bool AllFiniteF16(const std::vector<uint16_t>& values) {
  for (uint16_t h : values) {
    if ((h & 0x7c00u) == 0x7c00u) return false;  // inf or NaN
  }
  return true;
}

absl::Status SizeError(const std::string& name, const char* array, size_t got, int64_t want) {
  return absl::InvalidArgumentError(
      absl::StrCat(name, ": array '", array, "' has ", got, " elements, expected ", want));
}

// v[i] = RoundToF16(v[i]) for i < n, 8 at a time with F16C.
void RoundToF16InPlace(float* v, int64_t n) {
  int64_t i = 0;
#if defined(__F16C__)
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(v + i), _MM_FROUND_TO_NEAREST_INT);
    _mm256_storeu_ps(v + i, _mm256_cvtph_ps(h));
  }
#endif
  for (; i < n; ++i) v[i] = RoundToF16(v[i]);
}

}  // namespace

GroupStats DecodeGroupStats(const PackedSpqrLayer& layer, int64_t r, int64_t g) {
  const int64_t groups = layer.num_groups();
  if (layer.stats_bits == kFp16Stats) {
    return {F16ToF32(layer.scale_f16[r * groups + g]), F16ToF32(layer.zero_f16[r * groups + g])};
  }
  const int64_t stat_words = BitRowWords(groups, layer.stats_bits);
  const uint16_t* sl = &layer.second_level[((r / layer.beta2) * groups + g) * 4];
  const uint32_t qs = GetCode(layer.scale_codes.data() + r * stat_words, g, layer.stats_bits);
  const uint32_t qz = GetCode(layer.zero_codes.data() + r * stat_words, g, layer.stats_bits);
  if (layer.fp16_arithmetic()) {
    return {DequantSecondLevelF16(qs, sl[0], sl[1]), DequantSecondLevelF16(qz, sl[2], sl[3])};
  }
  return {DequantSecondLevel(qs, sl[0], sl[1]), DequantSecondLevel(qz, sl[2], sl[3])};
}

absl::Status ValidateSpqrLayer(const PackedSpqrLayer& l, const std::string& name) {
  const int64_t m = l.out_features, n = l.in_features;
  if (m <= 0 || n <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, ": shape must be positive, got out_features=", m, " in_features=", n));
  }
  if (m > 0xffffffffLL || n > 0xffffffffLL) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": shape ", m, "x", n, " too large"));
  }
  if (l.wbits < 2 || l.wbits > 8) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": wbits must be in 2..8, got ", l.wbits));
  }
  if (l.beta1 < 1 || n % l.beta1 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, ": beta1 must be >= 1 and divide in_features=", n, ", got ", l.beta1));
  }
  if (l.beta2 < 1) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": beta2 must be >= 1, got ", l.beta2));
  }
  if (!((l.stats_bits >= 3 && l.stats_bits <= 8) || l.stats_bits == kFp16Stats)) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, ": stats_bits must be in 3..8 or 16, got ", l.stats_bits));
  }
  if (l.decode_arithmetic != SpqrDecodeArithmetic::kFp32 &&
      l.decode_arithmetic != SpqrDecodeArithmetic::kFp16) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": unknown decode arithmetic ",
                                                   static_cast<uint32_t>(l.decode_arithmetic),
                                                   " (0 = fp32, 1 = fp16)"));
  }
  const int64_t groups = l.num_groups();
  const int64_t weight_words = m * BitRowWords(n, l.wbits);
  if (static_cast<int64_t>(l.weight_codes.size()) != weight_words) {
    return SizeError(name, "weight_codes", l.weight_codes.size(), weight_words);
  }
  if (!BitRowPaddingIsZero(l.weight_codes.data(), m, n, l.wbits)) {
    return absl::DataLossError(absl::StrCat(name, ": nonzero padding bits in weight_codes"));
  }
  if (l.stats_bits == kFp16Stats) {
    if (static_cast<int64_t>(l.scale_f16.size()) != m * groups) {
      return SizeError(name, "scale_f16", l.scale_f16.size(), m * groups);
    }
    if (static_cast<int64_t>(l.zero_f16.size()) != m * groups) {
      return SizeError(name, "zero_f16", l.zero_f16.size(), m * groups);
    }
    if (!l.scale_codes.empty() || !l.zero_codes.empty() || !l.second_level.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, ": 16-bit statistics layer must not carry stat codes"));
    }
    if (!AllFiniteF16(l.scale_f16) || !AllFiniteF16(l.zero_f16)) {
      return absl::DataLossError(absl::StrCat(name, ": non-finite fp16 statistic"));
    }
  } else {
    const int64_t stat_words = m * BitRowWords(groups, l.stats_bits);
    if (static_cast<int64_t>(l.scale_codes.size()) != stat_words) {
      return SizeError(name, "scale_codes", l.scale_codes.size(), stat_words);
    }
    if (static_cast<int64_t>(l.zero_codes.size()) != stat_words) {
      return SizeError(name, "zero_codes", l.zero_codes.size(), stat_words);
    }
    const int64_t second = l.num_row_blocks() * groups * 4;
    if (static_cast<int64_t>(l.second_level.size()) != second) {
      return SizeError(name, "second_level", l.second_level.size(), second);
    }
    if (!l.scale_f16.empty() || !l.zero_f16.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, ": quantized-statistics layer must not carry fp16 statistics"));
    }
    if (!BitRowPaddingIsZero(l.scale_codes.data(), m, groups, l.stats_bits) ||
        !BitRowPaddingIsZero(l.zero_codes.data(), m, groups, l.stats_bits)) {
      return absl::DataLossError(absl::StrCat(name, ": nonzero padding bits in statistic codes"));
    }
    if (!AllFiniteF16(l.second_level)) {
      return absl::DataLossError(absl::StrCat(name, ": non-finite second-level fp16 value"));
    }
  }
  // Permutation.
  if (static_cast<int64_t>(l.perm.size()) != n) return SizeError(name, "perm", l.perm.size(), n);
  std::vector<bool> seen(static_cast<size_t>(n), false);
  for (uint32_t p : l.perm) {
    if (p >= n || seen[p]) {
      return absl::DataLossError(
          absl::StrCat(name, ": perm is not a permutation of 0..", n - 1, " (entry ", p, ")"));
    }
    seen[p] = true;
  }
  // Outliers.
  if (static_cast<int64_t>(l.outlier_row_offsets.size()) != m + 1) {
    return SizeError(name, "outlier_row_offsets", l.outlier_row_offsets.size(), m + 1);
  }
  const int64_t nnz = l.num_outliers();
  const size_t cols = l.wide_column_ids() ? l.outlier_cols_u32.size() : l.outlier_cols_u16.size();
  const size_t other = l.wide_column_ids() ? l.outlier_cols_u16.size() : l.outlier_cols_u32.size();
  if (static_cast<int64_t>(cols) != nnz || other != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, ": outlier column ids (", l.wide_column_ids() ? "32" : "16",
                     "-bit) count ", cols, " does not match ", nnz, " outlier values"));
  }
  if (l.outlier_row_offsets[0] != 0 || l.outlier_row_offsets[m] != nnz) {
    return absl::DataLossError(absl::StrCat(name, ": outlier_row_offsets must run from 0 to ", nnz,
                                            ", got ", l.outlier_row_offsets[0], "..",
                                            l.outlier_row_offsets[m]));
  }
  for (int64_t r = 0; r < m; ++r) {
    const uint32_t begin = l.outlier_row_offsets[r], end = l.outlier_row_offsets[r + 1];
    if (end < begin) {
      return absl::DataLossError(absl::StrCat(name, ": outlier_row_offsets decrease at row ", r));
    }
    // The last offset is nnz, but a row before it may still point past the end (e.g. 0, 9, 2 with
    // nnz = 2): bound every row before its column ids are read.
    if (end > nnz) {
      return absl::DataLossError(absl::StrCat(name, ": outlier_row_offsets[", r + 1, "] = ", end,
                                              " exceeds the ", nnz, " outliers"));
    }
    for (uint32_t k = begin; k < end; ++k) {
      const uint32_t c = l.outlier_col(k);
      if (c >= n || (k > begin && c <= l.outlier_col(k - 1))) {
        return absl::DataLossError(absl::StrCat(name, ": outlier column id ", c, " in row ", r,
                                                " out of range or not strictly increasing"));
      }
    }
  }
  if (!AllFiniteF16(l.outlier_values)) {
    return absl::DataLossError(absl::StrCat(name, ": non-finite outlier value"));
  }
  return absl::OkStatus();
}

void ConvertBlockSecondLevel(const PackedSpqrLayer& l, int64_t block, float* out) {
  const int64_t count = l.num_groups() * 4;
  const uint16_t* src = l.second_level.data() + block * count;
  for (int64_t i = 0; i < count; ++i) out[i] = F16ToF32(src[i]);
}

void DecodeRowStats(const PackedSpqrLayer& l, int64_t r, const float* block_second, float* scale,
                    float* zero) {
  const int64_t groups = l.num_groups();
  if (l.stats_bits == kFp16Stats) {
    for (int64_t g = 0; g < groups; ++g) {
      scale[g] = F16ToF32(l.scale_f16[r * groups + g]);
      zero[g] = F16ToF32(l.zero_f16[r * groups + g]);
    }
    return;
  }
  const int64_t words = BitRowWords(groups, l.stats_bits);
  BitRowReader qs(l.scale_codes.data() + r * words, l.stats_bits);
  BitRowReader qz(l.zero_codes.data() + r * words, l.stats_bits);
  if (l.fp16_arithmetic()) {
    for (int64_t g = 0; g < groups; ++g) {
      const float* s = block_second + g * 4;
      // DequantSecondLevelF16's arithmetic on already converted fp16 values.
      scale[g] = RoundToF16(s[0] * RoundToF16(static_cast<float>(qs.Next()) - s[1]));
      zero[g] = RoundToF16(s[2] * RoundToF16(static_cast<float>(qz.Next()) - s[3]));
    }
    return;
  }
  for (int64_t g = 0; g < groups; ++g) {
    const float* s = block_second + g * 4;
    // DequantSecondLevel's arithmetic on already converted fp16 values.
    scale[g] = s[0] * (static_cast<float>(qs.Next()) - s[1]);
    zero[g] = s[2] * (static_cast<float>(qz.Next()) - s[3]);
  }
}

void DecodePermutedRowWithStats(const PackedSpqrLayer& l, int64_t r, const float* scale,
                                const float* zero, uint8_t* codes, float* out) {
  const int64_t n = l.in_features, groups = l.num_groups();
  UnpackBitRow(l.weight_codes.data() + r * BitRowWords(n, l.wbits), n, l.wbits, codes);
  const int beta1 = l.beta1;
  if (l.fp16_arithmetic()) {
    // DequantWeightF16 in three vectorizable passes: t = h(q - z), w = s * t, then h(w) for the
    // whole row.
    for (int64_t g = 0; g < groups; ++g) {
      const uint8_t* __restrict q = codes + g * beta1;
      float* __restrict dst = out + g * beta1;
      const float z = zero[g];
      for (int k = 0; k < beta1; ++k) dst[k] = static_cast<float>(q[k]) - z;
      RoundToF16InPlace(dst, beta1);
      const float s = scale[g];
      for (int k = 0; k < beta1; ++k) dst[k] = s * dst[k];
    }
    RoundToF16InPlace(out, n);
    for (uint32_t k = l.outlier_row_offsets[r]; k < l.outlier_row_offsets[r + 1]; ++k) {
      float& w = out[l.outlier_col(k)];
      w = AddOutlier(true, w, F16ToF32(l.outlier_values[k]));
    }
    return;
  }
  for (int64_t g = 0; g < groups; ++g) {
    // __restrict: uint8_t may alias anything, which would otherwise keep the loop scalar.
    const uint8_t* __restrict q = codes + g * beta1;
    float* __restrict dst = out + g * beta1;
    const float s = scale[g], z = zero[g];
    for (int k = 0; k < beta1; ++k) dst[k] = DequantWeight(q[k], s, z);
  }
  for (uint32_t k = l.outlier_row_offsets[r]; k < l.outlier_row_offsets[r + 1]; ++k) {
    out[l.outlier_col(k)] += F16ToF32(l.outlier_values[k]);
  }
}

void DecodePermutedRow(const PackedSpqrLayer& l, int64_t r, float* out) {
  const int64_t groups = l.num_groups();
  std::vector<float> second(l.stats_bits == kFp16Stats ? 0 : static_cast<size_t>(groups * 4));
  if (!second.empty()) ConvertBlockSecondLevel(l, r / l.beta2, second.data());
  std::vector<float> scale(static_cast<size_t>(groups)), zero(static_cast<size_t>(groups));
  DecodeRowStats(l, r, second.data(), scale.data(), zero.data());
  std::vector<uint8_t> codes(static_cast<size_t>(l.in_features));
  DecodePermutedRowWithStats(l, r, scale.data(), zero.data(), codes.data(), out);
}

absl::StatusOr<std::vector<float>> DequantizeSpqrLayer(const PackedSpqrLayer& l) {
  absl::Status st = ValidateSpqrLayer(l, "spqr layer");
  if (!st.ok()) return st;
  const int64_t m = l.out_features, n = l.in_features;
  std::vector<float> dense(static_cast<size_t>(m * n));
  std::vector<float> row(static_cast<size_t>(n));
  for (int64_t r = 0; r < m; ++r) {
    DecodePermutedRow(l, r, row.data());
    float* dst = dense.data() + r * n;
    for (int64_t j = 0; j < n; ++j) dst[l.perm[j]] = row[j];
  }
  return dense;
}

double SpqrFormulaBitsPerParameter(int wbits, int beta1, int beta2, int stats_bits,
                                   double outlier_fraction) {
  double bits = wbits + 32.0 * outlier_fraction;
  if (stats_bits == kFp16Stats) return bits + 32.0 / beta1;
  return bits + 2.0 * stats_bits / beta1 + 64.0 / (static_cast<double>(beta1) * beta2);
}

double SpqrFormulaBitsPerParameter(const PackedSpqrLayer& l) {
  const double params = static_cast<double>(l.out_features) * static_cast<double>(l.in_features);
  return SpqrFormulaBitsPerParameter(l.wbits, l.beta1, l.beta2, l.stats_bits,
                                     params > 0 ? l.num_outliers() / params : 0.0);
}

int64_t SpqrLayerPayloadBytes(const PackedSpqrLayer& l) {
  auto bytes = [](const auto& v) {
    return static_cast<int64_t>(v.size() * sizeof(typename std::decay_t<decltype(v)>::value_type));
  };
  return bytes(l.weight_codes) + bytes(l.scale_codes) + bytes(l.zero_codes) +
         bytes(l.second_level) + bytes(l.scale_f16) + bytes(l.zero_f16) +
         bytes(l.outlier_row_offsets) + bytes(l.outlier_cols_u16) + bytes(l.outlier_cols_u32) +
         bytes(l.outlier_values) + bytes(l.perm);
}

double SpqrRealBitsPerParameter(const PackedSpqrLayer& l) {
  const double params = static_cast<double>(l.out_features) * static_cast<double>(l.in_features);
  return params > 0 ? 8.0 * static_cast<double>(SpqrLayerPayloadBytes(l)) / params : 0.0;
}

}  // namespace spqr
