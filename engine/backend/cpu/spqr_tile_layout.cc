#include "engine/backend/cpu/spqr_tile_layout.h"

#include <algorithm>
#include <cstring>
#include <new>

#include "absl/strings/str_cat.h"
#include "engine/format/bit_packing.h"
#include "engine/util/half.h"

namespace spqr::cpu {

AlignedBytes::AlignedBytes(size_t size) : size_(size) {
  const size_t rounded = (size + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, rounded == 0 ? 64 : rounded);
  if (p == nullptr) throw std::bad_alloc();
  std::memset(p, 0, rounded == 0 ? 64 : rounded);
  data_.reset(static_cast<uint8_t*>(p));
}

absl::Status TileLayoutSupports(const PackedSpqrLayer& l) {
  if (l.in_features % kTileCols != 0) {
    return absl::UnimplementedError(
        absl::StrCat("in_features ", l.in_features, " is not a multiple of ", kTileCols));
  }
  if (l.wbits < 2 || l.wbits > 4) {
    return absl::UnimplementedError(absl::StrCat("wbits ", l.wbits, " (tiles hold 2..4 bits)"));
  }
  if (l.beta1 != 8 && l.beta1 % kTileCols != 0) {
    return absl::UnimplementedError(absl::StrCat("beta1 ", l.beta1, " (8 or a multiple of 16)"));
  }
  if (l.stats_bits != kFp16Stats) {
    if (l.stats_bits > 8) {
      return absl::UnimplementedError(absl::StrCat("stats_bits ", l.stats_bits));
    }
    if (l.beta2 % kTileRows != 0) {
      return absl::UnimplementedError(
          absl::StrCat("beta2 ", l.beta2, " is not a multiple of ", kTileRows));
    }
  }
  return absl::OkStatus();
}

namespace {

// Packs the 16x16 codes q[i][k] of one tile into `out` (see the header for the layout).
void PackTileCodes(const uint8_t (&q)[kTileRows][kTileCols], int wbits, uint8_t* out) {
  for (int i = 0; i < kTileRows; ++i) {
    for (int k = 0; k < 4; ++k) {
      const int b = 4 * i + k;
      const uint8_t c0 = q[i][k], c1 = q[i][4 + k], c2 = q[i][8 + k], c3 = q[i][12 + k];
      if (wbits == 4) {
        out[b] = static_cast<uint8_t>(c0 | (c1 << 4));
        out[64 + b] = static_cast<uint8_t>(c2 | (c3 << 4));
      } else {
        out[b] =
            static_cast<uint8_t>((c0 & 3) | ((c1 & 3) << 2) | ((c2 & 3) << 4) | ((c3 & 3) << 6));
        if (wbits == 3) {
          const uint8_t hi[4] = {c0, c1, c2, c3};
          for (int c = 0; c < 4; ++c) {
            if (hi[c] & 4) out[64 + 8 * c + b / 8] |= static_cast<uint8_t>(1u << (b % 8));
          }
        }
      }
    }
  }
}

// Appends code `v` of `bits` bits at stream position `index` of the little-endian stream at `out`.
void PutStreamCode(uint8_t* out, int index, int bits, uint32_t v) {
  for (int b = 0; b < bits; ++b) {
    const int pos = index * bits + b;
    if ((v >> b) & 1u) out[pos / 8] |= static_cast<uint8_t>(1u << (pos % 8));
  }
}

uint32_t GetStreamCode(const uint8_t* in, int index, int bits) {
  uint32_t v = 0;
  for (int b = 0; b < bits; ++b) {
    const int pos = index * bits + b;
    v |= static_cast<uint32_t>((in[pos / 8] >> (pos % 8)) & 1u) << b;
  }
  return v;
}

// Moves the layer's CSR outliers into steps per row tile (see the header).
void BuildOutlierSteps(const PackedSpqrLayer& src, SpqrTileLayout* l) {
  const int64_t m = src.out_features;
  l->wide_outlier_cols = src.wide_column_ids();
  const size_t entries = src.outlier_values.size() + SpqrTileLayout::kOutlierSlack;
  l->outlier_values.reserve(entries);
  if (l->wide_outlier_cols) {
    l->outlier_cols_u32.reserve(entries);
  } else {
    l->outlier_cols_u16.reserve(entries);
  }
  l->outlier_tile_steps.assign(1, 0);
  l->outlier_tile_entries.assign(1, 0);
  for (int64_t rt = 0; rt < l->row_tiles; ++rt) {
    const int64_t r0 = rt * kTileRows;
    const int rows = static_cast<int>(std::min<int64_t>(kTileRows, m - r0));
    uint32_t steps = 0;
    for (int i = 0; i < rows; ++i) {
      steps =
          std::max(steps, src.outlier_row_offsets[r0 + i + 1] - src.outlier_row_offsets[r0 + i]);
    }
    for (uint32_t k = 0; k < steps; ++k) {
      uint16_t mask = 0;
      for (int i = 0; i < rows; ++i) {
        const uint32_t e = src.outlier_row_offsets[r0 + i] + k;
        if (e >= src.outlier_row_offsets[r0 + i + 1]) continue;
        mask = static_cast<uint16_t>(mask | (1u << i));
        l->outlier_values.push_back(src.outlier_values[e]);
        if (l->wide_outlier_cols) {
          l->outlier_cols_u32.push_back(src.outlier_cols_u32[e]);
        } else {
          l->outlier_cols_u16.push_back(src.outlier_cols_u16[e]);
        }
      }
      l->outlier_step_masks.push_back(mask);
    }
    l->outlier_tile_steps.push_back(static_cast<uint32_t>(l->outlier_step_masks.size()));
    l->outlier_tile_entries.push_back(static_cast<uint32_t>(l->outlier_values.size()));
  }
  l->outlier_values.resize(l->outlier_values.size() + SpqrTileLayout::kOutlierSlack, 0);
  if (l->wide_outlier_cols) {
    l->outlier_cols_u32.resize(l->outlier_cols_u32.size() + SpqrTileLayout::kOutlierSlack, 0);
  } else {
    l->outlier_cols_u16.resize(l->outlier_cols_u16.size() + SpqrTileLayout::kOutlierSlack, 0);
  }
}

}  // namespace

int64_t SpqrTileLayout::bytes() const {
  const auto size = [](const auto& v) { return static_cast<int64_t>(v.size() * sizeof(v[0])); };
  return static_cast<int64_t>(codes.size() + stats.size()) + size(outlier_tile_steps) +
         size(outlier_tile_entries) + size(outlier_step_masks) + size(outlier_values) +
         size(outlier_cols_u16) + size(outlier_cols_u32);
}

absl::StatusOr<std::unique_ptr<SpqrTileLayout>> BuildSpqrTileLayout(
    std::shared_ptr<const PackedSpqrLayer> layer) {
  if (layer == nullptr) return absl::InvalidArgumentError("BuildSpqrTileLayout: no layer");
  const PackedSpqrLayer& src = *layer;
  if (absl::Status s = TileLayoutSupports(src); !s.ok()) return s;
  auto l = std::make_unique<SpqrTileLayout>();
  l->out_features = src.out_features;
  l->in_features = src.in_features;
  l->row_tiles = (src.out_features + kTileRows - 1) / kTileRows;
  l->col_tiles = src.in_features / kTileCols;
  l->groups = src.num_groups();
  l->wbits = src.wbits;
  l->beta1 = src.beta1;
  l->beta2 = src.beta2;
  l->stats_bits = src.stats_bits;
  l->fp16_arithmetic = src.fp16_arithmetic();
  l->unit_cols = src.beta1 == 8 ? 8 : 16;
  l->tile_code_bytes = 32 * src.wbits;
  l->group_stat_bytes = src.stats_bits == kFp16Stats ? 64 : 4 * src.stats_bits;
  l->codes = AlignedBytes(static_cast<size_t>(l->row_tiles * l->col_tiles * l->tile_code_bytes));
  l->stats = AlignedBytes(static_cast<size_t>(l->row_tiles * l->groups * l->group_stat_bytes + 64));

  const int64_t m = src.out_features, n = src.in_features, groups = l->groups;
  const int64_t code_words = BitRowWords(n, src.wbits);
  std::vector<uint8_t> rows(static_cast<size_t>(kTileRows * n));
  for (int64_t rt = 0; rt < l->row_tiles; ++rt) {
    std::fill(rows.begin(), rows.end(), 0);
    for (int i = 0; i < kTileRows && rt * kTileRows + i < m; ++i) {
      UnpackBitRow(src.weight_codes.data() + (rt * kTileRows + i) * code_words, n, src.wbits,
                   rows.data() + i * n);
    }
    for (int64_t ct = 0; ct < l->col_tiles; ++ct) {
      uint8_t q[kTileRows][kTileCols];
      for (int i = 0; i < kTileRows; ++i) {
        std::memcpy(q[i], rows.data() + i * n + ct * kTileCols, kTileCols);
      }
      PackTileCodes(q, src.wbits, l->codes.data() + (rt * l->col_tiles + ct) * l->tile_code_bytes);
    }
    for (int64_t g = 0; g < groups; ++g) {
      uint8_t* out = l->stats.data() + (rt * groups + g) * l->group_stat_bytes;
      for (int i = 0; i < kTileRows; ++i) {
        const int64_t r = rt * kTileRows + i;
        if (r >= m) break;
        if (src.stats_bits == kFp16Stats) {
          std::memcpy(out + 2 * i, &src.scale_f16[r * groups + g], 2);
          std::memcpy(out + 32 + 2 * i, &src.zero_f16[r * groups + g], 2);
        } else {
          const int b = src.stats_bits;
          const int64_t words = BitRowWords(groups, b);
          PutStreamCode(out, i, b, GetCode(src.scale_codes.data() + r * words, g, b));
          PutStreamCode(out + 2 * b, i, b, GetCode(src.zero_codes.data() + r * words, g, b));
        }
      }
    }
  }
  BuildOutlierSteps(src, l.get());
  auto slim = std::make_shared<PackedSpqrLayer>();
  slim->out_features = src.out_features;
  slim->in_features = src.in_features;
  slim->wbits = src.wbits;
  slim->beta1 = src.beta1;
  slim->beta2 = src.beta2;
  slim->stats_bits = src.stats_bits;
  slim->decode_arithmetic = src.decode_arithmetic;
  slim->second_level = src.second_level;
  slim->perm = src.perm;
  l->source = std::move(slim);
  return l;
}

uint32_t TileLayoutCode(const SpqrTileLayout& l, int64_t r, int64_t j) {
  const uint8_t* t = l.tile_codes(r / kTileRows, j / kTileCols);
  const int i = static_cast<int>(r % kTileRows), col = static_cast<int>(j % kTileCols);
  const int c = col / 4, b = 4 * i + col % 4;
  switch (l.wbits) {
    case 4:
      return (t[64 * (c / 2) + b] >> (4 * (c % 2))) & 15u;
    case 2:
      return (t[b] >> (2 * c)) & 3u;
    default:
      return ((t[b] >> (2 * c)) & 3u) | (((t[64 + 8 * c + b / 8] >> (b % 8)) & 1u) << 2);
  }
}

GroupStats TileLayoutStats(const SpqrTileLayout& l, int64_t r, int64_t g) {
  const uint8_t* s = l.group_stats(r / kTileRows, g);
  const int i = static_cast<int>(r % kTileRows);
  if (l.stats_bits == kFp16Stats) {
    uint16_t hs, hz;
    std::memcpy(&hs, s + 2 * i, 2);
    std::memcpy(&hz, s + 32 + 2 * i, 2);
    return {F16ToF32(hs), F16ToF32(hz)};
  }
  const int b = l.stats_bits;
  const uint16_t* sl = l.second_level(r / kTileRows, g);
  if (l.fp16_arithmetic) {
    return {DequantSecondLevelF16(GetStreamCode(s, i, b), sl[0], sl[1]),
            DequantSecondLevelF16(GetStreamCode(s + 2 * b, i, b), sl[2], sl[3])};
  }
  return {DequantSecondLevel(GetStreamCode(s, i, b), sl[0], sl[1]),
          DequantSecondLevel(GetStreamCode(s + 2 * b, i, b), sl[2], sl[3])};
}

void DecodeTileLayoutRow(const SpqrTileLayout& l, int64_t r, float* out) {
  for (int64_t g = 0; g < l.groups; ++g) {
    const GroupStats st = TileLayoutStats(l, r, g);
    for (int64_t j = g * l.beta1; j < (g + 1) * l.beta1; ++j) {
      const uint32_t q = TileLayoutCode(l, r, j);
      out[j] = l.fp16_arithmetic ? DequantWeightF16(q, st.scale, st.zero)
                                 : DequantWeight(q, st.scale, st.zero);
    }
  }
}

std::vector<TileLayoutOutlier> TileLayoutRowOutliers(const SpqrTileLayout& l, int64_t r) {
  const int64_t tile = r / kTileRows;
  const int row = static_cast<int>(r % kTileRows);
  std::vector<TileLayoutOutlier> out;
  uint32_t e = l.outlier_tile_entries[tile];
  for (uint32_t s = l.outlier_tile_steps[tile]; s < l.outlier_tile_steps[tile + 1]; ++s) {
    const uint32_t mask = l.outlier_step_masks[s];
    if ((mask >> row) & 1u) {
      // The row's entry follows those of the lower rows in this step.
      const uint32_t at = e + static_cast<uint32_t>(__builtin_popcount(mask & ((1u << row) - 1)));
      out.push_back({l.outlier_col(at), l.outlier_values[at]});
    }
    e += static_cast<uint32_t>(__builtin_popcount(mask));
  }
  return out;
}

}  // namespace spqr::cpu
