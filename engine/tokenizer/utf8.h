// UTF-8 helpers of the tokenizers: validation, lossy repair and code point iteration.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace spqr::utf8 {

inline constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD

bool IsValid(std::string_view s);
// `s` with every maximal invalid subsequence replaced by one U+FFFD: the rule of Python's
// bytes.decode("utf-8", "replace") and Rust's String::from_utf8_lossy (Unicode 3.9, "substitution
// of maximal subparts").
std::string Repair(std::string_view s);
// Appends the UTF-8 encoding of code point `cp` (< 0x110000, not a surrogate).
void Append(uint32_t cp, std::string* out);
// The byte length of the character starting with lead byte `lead` of a valid UTF-8 string.
inline size_t CharLen(unsigned char lead) {
  return lead < 0x80 ? 1 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4;
}
// The code point at `pos` of a valid UTF-8 string; `*len` gets its byte length.
uint32_t DecodeAt(std::string_view s, size_t pos, size_t* len);

}  // namespace spqr::utf8
