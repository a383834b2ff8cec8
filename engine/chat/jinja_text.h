// Python str semantics over UTF-8 std::string for the chat-template engine: code point
// decoding, str.isspace, strip/split/replace/startswith, case mapping, and the Jinja string
// filters that rest on them. Invalid UTF-8 bytes count as one code point each and round-trip
// unchanged (Python's surrogateescape view), so no input text makes these functions fail; only
// PyReplace throws jinja::Error, when its result would exceed kMaxStringBytes.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace spqr::jinja {

// Splits UTF-8 text into code-point substrings (each element is the bytes of one code point).
std::vector<std::string_view> SplitCodePoints(std::string_view s);
// The code point of one element of SplitCodePoints (an invalid byte gives 0xDC80 + byte, Python's
// surrogateescape value).
uint32_t DecodeCodePoint(std::string_view cp);
int64_t CodePointCount(std::string_view s);

// Python's str.isspace() for one code point.
bool IsPySpace(uint32_t cp);

// str.strip/lstrip/rstrip: `chars` null strips whitespace, else every code point in *chars.
std::string PyStrip(std::string_view s, const std::string* chars, bool left, bool right);
// str.split(sep=None|sep, maxsplit).
std::vector<std::string> PySplit(std::string_view s, const std::string* sep, int64_t maxsplit);
// str.rsplit(sep=None|sep, maxsplit).
std::vector<std::string> PyRSplit(std::string_view s, const std::string* sep, int64_t maxsplit);
// str.replace(old, new, count) (count < 0: all; empty `old` inserts between code points).
std::string PyReplace(std::string_view s, std::string_view old_s, std::string_view new_s,
                      int64_t count);
// str.upper/lower/title/capitalize, and Jinja's |title filter. Case mapping is Unicode's simple
// (one-to-one) mapping of the C.UTF-8 locale; Python additionally expands a few characters
// (German sharp s, ligatures) into several, which this does not.
std::string PyUpper(std::string_view s);
std::string PyLower(std::string_view s);
std::string PyTitle(std::string_view s);
std::string PyCapitalize(std::string_view s);
std::string JinjaTitle(std::string_view s);

}  // namespace spqr::jinja
