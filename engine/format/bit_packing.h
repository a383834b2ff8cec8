// Fixed-width bit packing of small unsigned integer codes (SpQR weight and statistic codes).
//
// A "bit row" holds `count` codes of `bits` bits each (1..16) as a little-endian bit stream in
// 32-bit words: code k occupies stream bits [k*bits, (k+1)*bits), and stream bit i is bit (i % 32)
// of word i / 32. Codes may straddle a word boundary. Every row starts on a fresh word; the unused
// high bits of a row's last word are zero. This layout is part of "spqr-format 1"
// (docs/model-format.md).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace spqr {

// Number of 32-bit words one bit row of `count` codes of `bits` bits occupies.
inline int64_t BitRowWords(int64_t count, int bits) { return (count * bits + 31) / 32; }

// Writes code `value` (must be < 2^bits) at index k of the bit row starting at `row`.
// The destination bits must be zero beforehand (rows are built by OR-ing codes in).
inline void PutCode(uint32_t* row, int64_t k, int bits, uint32_t value) {
  const int64_t bit = k * bits;
  const int64_t word = bit >> 5;
  const int shift = static_cast<int>(bit & 31);
  row[word] |= value << shift;
  if (shift + bits > 32) row[word + 1] |= value >> (32 - shift);
}

// Reads code k of the bit row starting at `row`.
inline uint32_t GetCode(const uint32_t* row, int64_t k, int bits) {
  const int64_t bit = k * bits;
  const int64_t word = bit >> 5;
  const int shift = static_cast<int>(bit & 31);
  uint64_t v = row[word] >> shift;
  if (shift + bits > 32) v |= static_cast<uint64_t>(row[word + 1]) << (32 - shift);
  return static_cast<uint32_t>(v) & ((1u << bits) - 1u);
}

// Sequential decoder of one bit row: yields codes 0, 1, 2, ... without recomputing word indices.
// Reads only words that hold bits of the row.
class BitRowReader {
 public:
  BitRowReader(const uint32_t* row, int bits) : row_(row), bits_(bits), mask_((1u << bits) - 1u) {}
  uint32_t Next() {
    if (avail_ < bits_) {
      buffer_ |= static_cast<uint64_t>(*row_++) << avail_;
      avail_ += 32;
    }
    const uint32_t v = static_cast<uint32_t>(buffer_) & mask_;
    buffer_ >>= bits_;
    avail_ -= bits_;
    return v;
  }

 private:
  const uint32_t* row_;
  int bits_;
  uint32_t mask_;
  uint64_t buffer_ = 0;
  int avail_ = 0;
};

// Unpacks all `count` codes of one bit row into out[0..count) (fast paths for 2, 3, 4 and 8 bits).
void UnpackBitRow(const uint32_t* row, int64_t count, int bits, uint8_t* out);

// Packs a rows x cols matrix of codes (row-major, each < 2^bits) into bit rows.
std::vector<uint32_t> PackBitRows(const uint8_t* codes, int64_t rows, int64_t cols, int bits);
// Inverse of PackBitRows.
std::vector<uint8_t> UnpackBitRows(const uint32_t* words, int64_t rows, int64_t cols, int bits);

// True when the padding bits after the last code of every row are zero (a cheap corruption check).
bool BitRowPaddingIsZero(const uint32_t* words, int64_t rows, int64_t cols, int bits);

}  // namespace spqr
