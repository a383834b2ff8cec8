#include "engine/tokenizer/utf8.h"

namespace spqr::utf8 {
namespace {

// The length of the valid character at s[pos] (1-4), or 0 when s[pos] starts an invalid
// sequence; then `*bad` gets the length of its maximal subpart (the bytes that are a valid prefix
// of some character, at least 1), which one U+FFFD replaces.
size_t ValidCharAt(std::string_view s, size_t pos, size_t* bad) {
  const auto byte = [&](size_t i) { return static_cast<unsigned char>(s[i]); };
  const unsigned char b0 = byte(pos);
  *bad = 1;
  if (b0 < 0x80) return 1;
  size_t need;
  unsigned char lo = 0x80, hi = 0xBF;  // the allowed range of the second byte
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    need = 2;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    need = 3;
    if (b0 == 0xE0) lo = 0xA0;  // no overlong forms
    if (b0 == 0xED) hi = 0x9F;  // no surrogates
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    need = 4;
    if (b0 == 0xF0) lo = 0x90;
    if (b0 == 0xF4) hi = 0x8F;  // <= U+10FFFF
  } else {
    return 0;  // continuation byte, C0/C1 or F5..FF: invalid on its own
  }
  for (size_t k = 1; k < need; ++k) {
    if (pos + k >= s.size()) {
      *bad = k;
      return 0;
    }
    const unsigned char b = byte(pos + k);
    const bool ok = k == 1 ? (b >= lo && b <= hi) : (b >= 0x80 && b <= 0xBF);
    if (!ok) {
      *bad = k;
      return 0;
    }
  }
  return need;
}

}  // namespace

bool IsValid(std::string_view s) {
  size_t pos = 0, bad;
  while (pos < s.size()) {
    // ASCII fast path, 8 bytes at a time.
    while (pos + 8 <= s.size()) {
      uint64_t word = 0;
      for (int k = 0; k < 8; ++k) word |= static_cast<uint64_t>(static_cast<uint8_t>(s[pos + k]));
      if (word & 0x80) break;
      pos += 8;
    }
    if (pos >= s.size()) break;
    const size_t len = ValidCharAt(s, pos, &bad);
    if (len == 0) return false;
    pos += len;
  }
  return true;
}

std::string Repair(std::string_view s) {
  std::string out;
  out.reserve(s.size() + 8);
  size_t pos = 0, bad;
  while (pos < s.size()) {
    const size_t len = ValidCharAt(s, pos, &bad);
    if (len == 0) {
      out.append(kReplacement);
      pos += bad;
    } else {
      out.append(s.substr(pos, len));
      pos += len;
    }
  }
  return out;
}

void Append(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

uint32_t DecodeAt(std::string_view s, size_t pos, size_t* len) {
  const auto b = [&](size_t i) { return static_cast<uint32_t>(static_cast<uint8_t>(s[pos + i])); };
  *len = CharLen(static_cast<unsigned char>(s[pos]));
  switch (*len) {
    case 1:
      return b(0);
    case 2:
      return ((b(0) & 0x1F) << 6) | (b(1) & 0x3F);
    case 3:
      return ((b(0) & 0x0F) << 12) | ((b(1) & 0x3F) << 6) | (b(2) & 0x3F);
    default:
      return ((b(0) & 0x07) << 18) | ((b(1) & 0x3F) << 12) | ((b(2) & 0x3F) << 6) | (b(3) & 0x3F);
  }
}

}  // namespace spqr::utf8
