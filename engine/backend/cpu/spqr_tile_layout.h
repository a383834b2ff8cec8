// The CPU backend's working layout of a packed SpQR layer ("tile layout"), made once at load from
// spqr-format 1 (engine/format/spqr_layer.h); no new file format.
//
// Output rows are cut into row tiles of 16 (the last one zero-padded), input columns (in the
// format's permuted order) into column tiles of 16. For each (row tile R, column tile C) the 256
// weight codes are stored so that one 64-byte vector holds a "chunk": 4 consecutive columns
// 4c..4c+3 of all 16 rows, byte 4*i + k = code(row 16R+i, column 16C+4c+k). That is the operand
// shape of an int8 dot-product instruction (x86 VPDPBUSD: 16 int32 lanes, each summing 4 u8 x s8
// products), so lane i accumulates row i and the 4 activation bytes are one broadcast. The codes
// keep their bit width:
//   wbits 4: 128 bytes per tile: [0,64) = chunk0 | chunk1 << 4, [64,128) = chunk2 | chunk3 << 4.
//   wbits 2:  64 bytes per tile: [0,64) = chunk0 | chunk1 << 2 | chunk2 << 4 | chunk3 << 6.
//   wbits 3:  96 bytes per tile: [0,64) = the low 2 bits as for wbits 2; [64,96) = four 64-bit
//             masks, bit 4*i + k of mask c = bit 2 of code(16R+i, 16C+4c+k).
// Statistics stay compressed, per (row tile R, group g): the 16 rows' scale codes as one
// little-endian bit stream of 16 x stats_bits bits (row i at bits [i*b, (i+1)*b)), then the zero
// codes likewise (4 * stats_bits bytes in all); with fp16 statistics 16 fp16 scales then 16 fp16
// zeros (64 bytes). Second-level values are the format's array, unchanged (a row tile lies in one
// second-level block because beta2 is a multiple of 16). The permutation is read from the source
// layer.
// Outliers move from the format's CSR rows into "steps" per row tile, so that one 16-lane vector
// operation (row i in lane i, like the dense accumulators) serves up to 16 of them: step k of a
// tile holds the k-th outlier (CSR order) of each of its rows that has more than k, in row order,
// and a 16-bit mask per step says which rows those are. A tile has as many steps as its busiest
// row has outliers; the entries themselves are the format's (fp16 residual, permuted column), each
// stored once, so the steps cost 2 bytes per step and 8 per tile where CSR cost 4 per row.
//
// So the layout holds the format's own bits plus the padding of the last row tile; decoding it
// (DecodeTileLayoutRow, TileLayoutRowOutliers) gives exactly the format's DecodePermutedRow and
// outliers, which the tests check bit for bit.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/format/spqr_layer.h"

namespace spqr::cpu {

inline constexpr int kTileRows = 16;
inline constexpr int kTileCols = 16;

// 64-byte aligned, zero-initialized bytes.
class AlignedBytes {
 public:
  AlignedBytes() = default;
  explicit AlignedBytes(size_t size);
  uint8_t* data() { return data_.get(); }
  const uint8_t* data() const { return data_.get(); }
  size_t size() const { return size_; }

 private:
  struct Free {
    void operator()(uint8_t* p) const { std::free(p); }
  };
  std::unique_ptr<uint8_t[], Free> data_;
  size_t size_ = 0;
};

struct SpqrTileLayout {
  std::shared_ptr<const PackedSpqrLayer> source;  // outliers, permutation, parameters
  int64_t out_features = 0;
  int64_t in_features = 0;
  int64_t row_tiles = 0;  // ceil(m / 16)
  int64_t col_tiles = 0;  // n / 16
  int64_t groups = 0;     // n / beta1
  int wbits = 0;
  int beta1 = 0;
  int beta2 = 0;
  int stats_bits = 0;
  // The source's "fp16 arithmetic" decode variant: the statistics are decoded with fp16 rounding
  // (TileLayoutStats, the kernels' GroupStats); see spqr_tile_kernel.h for what the int8 kernel
  // does not model.
  bool fp16_arithmetic = false;
  // Columns that share one activation scale in the int8 kernel and one epilogue: 16, or 8 when
  // beta1 == 8 (then a column tile spans two groups).
  int unit_cols = 16;
  int64_t tile_code_bytes = 0;   // 32 * wbits
  int64_t group_stat_bytes = 0;  // 4 * stats_bits, or 64 for fp16 statistics
  AlignedBytes codes;            // [row_tiles][col_tiles][tile_code_bytes]
  AlignedBytes stats;            // [row_tiles][groups][group_stat_bytes] + 64 bytes of slack
  // Outlier steps (see above). Steps of row tile R: [outlier_tile_steps[R],
  // outlier_tile_steps[R + 1]); its entries start at outlier_tile_entries[R], in step order and
  // within a step in row order. The entry arrays end in kOutlierSlack zero elements, so a kernel
  // may read 16 entries from any entry on.
  static constexpr int kOutlierSlack = 16;
  bool wide_outlier_cols = false;              // columns as uint32 (in_features > 65535)
  std::vector<uint32_t> outlier_tile_steps;    // [row_tiles + 1]
  std::vector<uint32_t> outlier_tile_entries;  // [row_tiles + 1]
  std::vector<uint16_t> outlier_step_masks;    // [steps]
  std::vector<uint16_t> outlier_values;        // [entries + slack] fp16 residuals
  std::vector<uint16_t> outlier_cols_u16;      // [entries + slack] unless wide_outlier_cols
  std::vector<uint32_t> outlier_cols_u32;      // [entries + slack] if wide_outlier_cols

  int64_t units() const { return in_features / unit_cols; }
  const uint8_t* tile_codes(int64_t r_tile, int64_t c_tile) const {
    return codes.data() + (r_tile * col_tiles + c_tile) * tile_code_bytes;
  }
  const uint8_t* group_stats(int64_t r_tile, int64_t g) const {
    return stats.data() + (r_tile * groups + g) * group_stat_bytes;
  }
  // The four second-level fp16 values of (row tile, group) (stats_bits < 16 only).
  const uint16_t* second_level(int64_t r_tile, int64_t g) const {
    return source->second_level.data() + ((r_tile * kTileRows / beta2) * groups + g) * 4;
  }
  uint32_t outlier_col(int64_t e) const {
    return wide_outlier_cols ? outlier_cols_u32[e] : outlier_cols_u16[e];
  }
  // Resident bytes of the layout's own arrays (the source's permutation and second-level values
  // excluded).
  int64_t bytes() const;
};

// Whether `layer` can use the tile layout: n a multiple of 16, wbits 2..4, beta1 == 8 or a
// multiple of 16, and fp16 statistics or stats_bits <= 8 with beta2 a multiple of 16. When not,
// the reason.
absl::Status TileLayoutSupports(const PackedSpqrLayer& layer);

// Builds the layout (the layer must have passed ValidateSpqrLayer). The layout's `source` is a
// copy of the layer without the arrays the layout now holds (weight and statistic codes,
// outliers), so the caller can drop the original and keep the layer's bits once in memory.
absl::StatusOr<std::unique_ptr<SpqrTileLayout>> BuildSpqrTileLayout(
    std::shared_ptr<const PackedSpqrLayer> layer);

// Weight code of (row r, permuted column j) and the first-level statistics of (row r, group g)
// read back from the layout: the exact inputs of the format's decode.
uint32_t TileLayoutCode(const SpqrTileLayout& l, int64_t r, int64_t j);
GroupStats TileLayoutStats(const SpqrTileLayout& l, int64_t r, int64_t g);

// Permuted row r decoded from the layout without outliers: out[j] = scale * (code - zero) with the
// format's arithmetic, the layer's decode variant included (equals DecodePermutedRow of a layer
// without outliers, bit for bit).
void DecodeTileLayoutRow(const SpqrTileLayout& l, int64_t r, float* out);

// The outliers of row r read back from the steps, in the format's CSR order.
struct TileLayoutOutlier {
  uint32_t col;    // permuted column
  uint16_t value;  // fp16 residual
};
std::vector<TileLayoutOutlier> TileLayoutRowOutliers(const SpqrTileLayout& l, int64_t r);

}  // namespace spqr::cpu
