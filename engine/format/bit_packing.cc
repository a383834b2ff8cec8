#include "engine/format/bit_packing.h"

namespace spqr {

std::vector<uint32_t> PackBitRows(const uint8_t* codes, int64_t rows, int64_t cols, int bits) {
  const int64_t words = BitRowWords(cols, bits);
  std::vector<uint32_t> out(static_cast<size_t>(rows * words), 0u);
  for (int64_t r = 0; r < rows; ++r) {
    uint32_t* row = out.data() + r * words;
    for (int64_t c = 0; c < cols; ++c) PutCode(row, c, bits, codes[r * cols + c]);
  }
  return out;
}

std::vector<uint8_t> UnpackBitRows(const uint32_t* words, int64_t rows, int64_t cols, int bits) {
  const int64_t row_words = BitRowWords(cols, bits);
  std::vector<uint8_t> out(static_cast<size_t>(rows * cols));
  for (int64_t r = 0; r < rows; ++r) {
    BitRowReader reader(words + r * row_words, bits);
    for (int64_t c = 0; c < cols; ++c) out[r * cols + c] = static_cast<uint8_t>(reader.Next());
  }
  return out;
}

bool BitRowPaddingIsZero(const uint32_t* words, int64_t rows, int64_t cols, int bits) {
  const int64_t row_words = BitRowWords(cols, bits);
  const int used = static_cast<int>((cols * bits) & 31);
  if (used == 0) return true;  // rows end exactly on a word boundary
  const uint32_t pad_mask = ~((1u << used) - 1u);
  for (int64_t r = 0; r < rows; ++r) {
    if (words[r * row_words + row_words - 1] & pad_mask) return false;
  }
  return true;
}

}  // namespace spqr
