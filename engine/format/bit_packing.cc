#include "engine/format/bit_packing.h"

#include <cstring>

#if defined(__BMI2__)
#include <immintrin.h>
#endif

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

void UnpackBitRow(const uint32_t* row, int64_t count, int bits, uint8_t* out) {
  // Bit rows are little-endian streams, so on a little-endian host the row's bytes are the stream
  // in order and whole-byte chunks can be decoded independently (vectorizable loops).
  const auto* bytes = reinterpret_cast<const uint8_t*>(row);
  int64_t k = 0;
#if defined(__BMI2__)
  // 8 codes are exactly `bits` bytes; one PDEP spreads them into 8 bytes. Only full 8-byte loads
  // that stay inside the row are taken this way.
  if (bits < 8) {
    const uint64_t spread = 0x0101010101010101ull * ((1u << bits) - 1u);
    const int64_t row_bytes = BitRowWords(count, bits) * 4;
    for (; k + 8 <= count && (k / 8) * bits + 8 <= row_bytes; k += 8) {
      uint64_t v;
      std::memcpy(&v, bytes + (k / 8) * bits, 8);
      const uint64_t out8 = _pdep_u64(v, spread);
      std::memcpy(out + k, &out8, 8);
    }
  }
#endif
  if (bits == 4) {
    for (; k + 2 <= count; k += 2) {
      const uint8_t b = bytes[k / 2];
      out[k] = b & 15u;
      out[k + 1] = b >> 4;
    }
  } else if (bits == 2) {
    for (; k + 4 <= count; k += 4) {
      const uint8_t b = bytes[k / 4];
      out[k] = b & 3u;
      out[k + 1] = (b >> 2) & 3u;
      out[k + 2] = (b >> 4) & 3u;
      out[k + 3] = b >> 6;
    }
  } else if (bits == 3) {
    for (; k + 8 <= count; k += 8) {
      const uint8_t* p = bytes + (k / 8) * 3;
      const uint32_t v =
          p[0] | (static_cast<uint32_t>(p[1]) << 8) | (static_cast<uint32_t>(p[2]) << 16);
      for (int i = 0; i < 8; ++i) out[k + i] = (v >> (3 * i)) & 7u;
    }
  } else if (bits == 8) {
    std::memcpy(out + k, bytes + k, static_cast<size_t>(count - k));
    k = count;
  }
  for (; k < count; ++k) out[k] = static_cast<uint8_t>(GetCode(row, k, bits));
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
