#include "quantizer/hf_spqr_import.h"

#include <algorithm>
#include <cstring>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/format/bit_packing.h"
#include "engine/util/status_macros.h"

namespace spqr {
namespace {

absl::Status Bad(const std::string& tensor, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat("tensor '", tensor, "': ", what));
}

// The tensor `name` as a copy of `count` little-endian elements of `dtype` (1-D expected).
template <typename T>
absl::StatusOr<std::vector<T>> Read(const TensorLookup& lookup, const std::string& name,
                                    DType dtype, int64_t expected_count /* -1: any */) {
  const TensorView* view = lookup(name);
  if (view == nullptr) return Bad(name, "missing (transformers SpQR layers need it)");
  if (view->dtype != dtype) {
    return Bad(name, absl::StrCat("dtype ", std::string(DTypeName(view->dtype)), ", expected ",
                                  std::string(DTypeName(dtype))));
  }
  if (view->shape.size() != 1) {
    return Bad(name, absl::StrCat("has ", view->shape.size(), " dimensions, expected 1"));
  }
  const int64_t count = view->shape[0];
  if (expected_count >= 0 && count != expected_count) {
    return Bad(name, absl::StrCat("has ", count, " elements, expected ", expected_count));
  }
  if (view->nbytes != static_cast<size_t>(count) * sizeof(T)) {
    return Bad(name, "byte size does not match its shape");
  }
  std::vector<T> out(count);
  if (count > 0) std::memcpy(out.data(), view->data, view->nbytes);
  return out;
}

struct Outlier {
  int64_t row;
  uint32_t col;
  uint16_t value;
};

}  // namespace

absl::StatusOr<PackedSpqrLayer> ImportHfSpqrLayer(const TensorLookup& lookup,
                                                  const std::string& prefix, int64_t m, int64_t n) {
  const std::string dw_name = prefix + ".dense_weights";
  const std::string ro_name = prefix + ".row_offsets";
  const std::string cv_name = prefix + ".col_vals";
  const std::string ip_name = prefix + ".in_perm";
  constexpr int T = kHfSpqrTile;
  if (m <= 0 || n <= 0 || m % T != 0 || n % T != 0) {
    return Bad(dw_name, absl::StrCat("layer shape [", m, ", ", n,
                                     "] is not a multiple of the 16x16 tiles of the layout (its "
                                     "decoders lose the statistics of partial tiles)"));
  }
  if (n > 32768) {
    return Bad(cv_name, absl::StrCat("in_features=", n,
                                     " exceeds 32768; the layout's 16-bit signed column ids "
                                     "cannot address it"));
  }
  const int64_t tiles_m = m / T, tiles_n = n / T;
  ASSIGN_OR_RETURN(std::vector<int64_t> dense,
                   Read<int64_t>(lookup, dw_name, DType::kI64, tiles_m * tiles_n * T));
  ASSIGN_OR_RETURN(std::vector<int32_t> row_offsets,
                   Read<int32_t>(lookup, ro_name, DType::kI32, -1));
  ASSIGN_OR_RETURN(std::vector<int32_t> col_vals, Read<int32_t>(lookup, cv_name, DType::kI32, -1));
  ASSIGN_OR_RETURN(std::vector<int32_t> in_perm, Read<int32_t>(lookup, ip_name, DType::kI32, -1));

  PackedSpqrLayer layer;
  layer.out_features = m;
  layer.in_features = n;
  layer.wbits = kHfSpqrBits;
  layer.beta1 = T;  // our beta1: columns per group (their beta2)
  layer.beta2 = T;  // our beta2: rows per second-level block (their beta1)
  layer.stats_bits = kHfSpqrBits;
  // Their decoders round every step to fp16; the "fp16 arithmetic" variant reproduces them.
  layer.decode_arithmetic = SpqrDecodeArithmetic::kFp16;
  const int64_t groups = tiles_n;
  const int64_t w_words = BitRowWords(n, kHfSpqrBits);
  const int64_t s_words = BitRowWords(groups, kHfSpqrBits);
  layer.weight_codes.assign(m * w_words, 0);
  layer.scale_codes.assign(m * s_words, 0);
  layer.zero_codes.assign(m * s_words, 0);
  layer.second_level.assign(tiles_m * groups * 4, 0);

  for (int64_t ti = 0; ti < tiles_m; ++ti) {
    for (int64_t tj = 0; tj < tiles_n; ++tj) {
      const uint64_t* words =
          reinterpret_cast<const uint64_t*>(dense.data()) + (ti * tiles_n + tj) * T;
      // The second-order word exactly as both of their decoders assemble it (unmasked fragments
      // OR-ed, rows 2k and 2k+1 carrying the same byte).
      uint64_t second = 0;
      for (int k = 0; k < T; ++k) second |= (words[k] >> 54) << (8 * (k / 2));
      uint16_t* s = &layer.second_level[(ti * groups + tj) * 4];
      s[0] = static_cast<uint16_t>(second);        // scale of scales
      s[1] = static_cast<uint16_t>(second >> 32);  // zero of scales
      s[2] = static_cast<uint16_t>(second >> 16);  // scale of zeros
      s[3] = static_cast<uint16_t>(second >> 48);  // zero of zeros
      for (int k = 0; k < T; ++k) {
        const int64_t r = ti * T + k;
        const uint64_t w = words[k];
        PutCode(&layer.scale_codes[r * s_words], tj, kHfSpqrBits, w & 7u);
        PutCode(&layer.zero_codes[r * s_words], tj, kHfSpqrBits, (w >> 3) & 7u);
        for (int j = 0; j < T; ++j) {
          PutCode(&layer.weight_codes[r * w_words], tj * T + j, kHfSpqrBits,
                  (w >> (6 + 3 * j)) & 7u);
        }
      }
    }
  }

  // Outliers: CSR ([m+1]) or PTCSR ([m/16+1]); gathered as (row, col, value), then sorted.
  const int64_t nnz_stored = static_cast<int64_t>(col_vals.size());
  const bool csr = static_cast<int64_t>(row_offsets.size()) == m + 1;
  const int64_t segments = csr ? m : tiles_m;
  if (!csr && static_cast<int64_t>(row_offsets.size()) != tiles_m + 1) {
    return Bad(ro_name, absl::StrCat("has ", row_offsets.size(), " entries, expected ", m + 1,
                                     " (CSR) or ", tiles_m + 1, " (PTCSR)"));
  }
  if (row_offsets[0] != 0) return Bad(ro_name, "first offset is not 0");
  std::vector<Outlier> outliers;
  for (int64_t seg = 0; seg < segments; ++seg) {
    const int64_t begin = row_offsets[seg], end = row_offsets[seg + 1];
    if (end < begin || end > nnz_stored) {
      return Bad(ro_name, absl::StrCat("offsets ", seg, "..", seg + 1, " = ", begin, "..", end,
                                       " are decreasing or beyond the ", nnz_stored,
                                       " entries of '", cv_name, "'"));
    }
    if (!csr && (begin % T != 0 || end % T != 0)) {
      return Bad(ro_name, absl::StrCat("PTCSR offset of block ", seg, " is not a multiple of 16"));
    }
    for (int64_t e = begin; e < end; ++e) {
      const uint32_t raw = static_cast<uint32_t>(col_vals[e]);
      // PTCSR pads blocks with all-zero entries (column 0, +0.0); their kernel stops at them.
      if (!csr && raw == 0) continue;
      const int32_t col = static_cast<int16_t>(raw & 0xffffu);
      if (col < 0 || col >= n) {
        return Bad(cv_name, absl::StrCat("entry ", e, " has column ", col, " outside 0..", n - 1));
      }
      const int64_t row = csr ? seg : seg * T + (e % T);
      outliers.push_back({row, static_cast<uint32_t>(col), static_cast<uint16_t>(raw >> 16)});
    }
  }
  if (csr && row_offsets[m] != nnz_stored) {
    return Bad(ro_name, absl::StrCat("last offset ", row_offsets[m], " differs from the ",
                                     nnz_stored, " entries of '", cv_name, "'"));
  }
  std::stable_sort(outliers.begin(), outliers.end(), [](const Outlier& a, const Outlier& b) {
    return a.row != b.row ? a.row < b.row : a.col < b.col;
  });
  layer.outlier_row_offsets.assign(m + 1, 0);
  for (size_t k = 0; k < outliers.size(); ++k) {
    if (k > 0 && outliers[k].row == outliers[k - 1].row && outliers[k].col == outliers[k - 1].col) {
      // Their decoders would add both values; one fp16 residual cannot hold that sum exactly.
      return Bad(cv_name, absl::StrCat("two outliers at row ", outliers[k].row, ", column ",
                                       outliers[k].col));
    }
    layer.outlier_row_offsets[outliers[k].row + 1]++;
    layer.outlier_cols_u16.push_back(static_cast<uint16_t>(outliers[k].col));
    layer.outlier_values.push_back(outliers[k].value);
  }
  for (int64_t r = 0; r < m; ++r) layer.outlier_row_offsets[r + 1] += layer.outlier_row_offsets[r];

  // Permutation: pairs of uint16 in int32 entries; empty = identity.
  layer.perm.resize(n);
  if (in_perm.empty()) {
    for (int64_t j = 0; j < n; ++j) layer.perm[j] = static_cast<uint32_t>(j);
  } else if (static_cast<int64_t>(in_perm.size()) * 2 == n) {
    for (int64_t i = 0; i < n / 2; ++i) {
      const uint32_t u = static_cast<uint32_t>(in_perm[i]);
      layer.perm[2 * i] = u & 0xffffu;
      layer.perm[2 * i + 1] = u >> 16;
    }
  } else {
    return Bad(ip_name, absl::StrCat("has ", in_perm.size(), " entries, expected ", n / 2,
                                     " (pairs of 16-bit column ids) or 0 (no permutation)"));
  }
  RETURN_IF_ERROR(ValidateSpqrLayer(layer, prefix));
  return layer;
}

}  // namespace spqr
