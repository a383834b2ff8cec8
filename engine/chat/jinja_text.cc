#include "engine/chat/jinja_text.h"

#include <locale.h>
#include <wctype.h>

#include <algorithm>

#include "engine/chat/jinja_value.h"
#include "engine/tokenizer/utf8.h"

namespace spqr::jinja {
namespace {

// Length of the valid UTF-8 sequence starting at s[i], or 0 when the bytes there are invalid.
size_t Utf8SeqLen(std::string_view s, size_t i) {
  const auto b = static_cast<unsigned char>(s[i]);
  size_t n;
  uint32_t min;
  if (b < 0x80) return 1;
  if ((b & 0xE0) == 0xC0) {
    n = 2;
    min = 0x80;
  } else if ((b & 0xF0) == 0xE0) {
    n = 3;
    min = 0x800;
  } else if ((b & 0xF8) == 0xF0) {
    n = 4;
    min = 0x10000;
  } else {
    return 0;
  }
  if (i + n > s.size()) return 0;
  uint32_t cp = b & (0x7F >> n);
  for (size_t k = 1; k < n; ++k) {
    const auto c = static_cast<unsigned char>(s[i + k]);
    if ((c & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (c & 0x3F);
  }
  if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
  return n;
}

// The C.UTF-8 locale for wide-character case mapping, created once; never the global locale,
// so the process's locale settings do not change template output.
locale_t Utf8Locale() {
  static locale_t loc = [] {
    locale_t l = newlocale(LC_CTYPE_MASK, "C.UTF-8", static_cast<locale_t>(0));
    return l != static_cast<locale_t>(0) ? l : newlocale(LC_CTYPE_MASK, "C", (locale_t)0);
  }();
  return loc;
}

uint32_t ToUpper(uint32_t cp) {
  if (cp < 0x80) return (cp >= 'a' && cp <= 'z') ? cp - 32 : cp;
  if (cp >= 0xDC80 && cp <= 0xDCFF) return cp;
  return static_cast<uint32_t>(towupper_l(static_cast<wint_t>(cp), Utf8Locale()));
}
uint32_t ToLower(uint32_t cp) {
  if (cp < 0x80) return (cp >= 'A' && cp <= 'Z') ? cp + 32 : cp;
  if (cp >= 0xDC80 && cp <= 0xDCFF) return cp;
  return static_cast<uint32_t>(towlower_l(static_cast<wint_t>(cp), Utf8Locale()));
}
bool IsCased(uint32_t cp) { return ToUpper(cp) != cp || ToLower(cp) != cp; }

// Appends a code point, writing surrogate-escaped bytes back as the original byte.
void AppendCp(uint32_t cp, std::string* out) {
  if (cp >= 0xDC80 && cp <= 0xDCFF) {
    out->push_back(static_cast<char>(cp - 0xDC00));
  } else {
    utf8::Append(cp, out);
  }
}

template <typename F>
std::string MapCodePoints(std::string_view s, F f) {
  std::string out;
  out.reserve(s.size());
  for (std::string_view cp : SplitCodePoints(s)) AppendCp(f(DecodeCodePoint(cp)), &out);
  return out;
}

}  // namespace

std::vector<std::string_view> SplitCodePoints(std::string_view s) {
  std::vector<std::string_view> out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    size_t n = Utf8SeqLen(s, i);
    if (n == 0) n = 1;
    out.push_back(s.substr(i, n));
    i += n;
  }
  return out;
}

uint32_t DecodeCodePoint(std::string_view cp) {
  if (cp.empty()) return 0;
  const auto b = static_cast<unsigned char>(cp[0]);
  if (cp.size() == 1) return b < 0x80 ? b : 0xDC00 + b;
  uint32_t v = b & (0x7F >> cp.size());
  for (size_t k = 1; k < cp.size(); ++k) v = (v << 6) | (static_cast<unsigned char>(cp[k]) & 0x3F);
  return v;
}

int64_t CodePointCount(std::string_view s) {
  int64_t n = 0;
  size_t i = 0;
  while (i < s.size()) {
    const size_t len = Utf8SeqLen(s, i);
    i += len == 0 ? 1 : len;
    ++n;
  }
  return n;
}

bool IsPySpace(uint32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20) || cp == 0x85 || cp == 0xA0 ||
         cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 ||
         cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

std::string PyStrip(std::string_view s, const std::string* chars, bool left, bool right) {
  std::vector<std::string_view> cps = SplitCodePoints(s);
  std::vector<std::string_view> set;
  if (chars != nullptr) set = SplitCodePoints(*chars);
  auto strip_it = [&](std::string_view cp) {
    if (chars == nullptr) return IsPySpace(DecodeCodePoint(cp));
    return std::find(set.begin(), set.end(), cp) != set.end();
  };
  size_t b = 0, e = cps.size();
  if (left) {
    while (b < e && strip_it(cps[b])) ++b;
  }
  if (right) {
    while (e > b && strip_it(cps[e - 1])) --e;
  }
  std::string out;
  for (size_t i = b; i < e; ++i) out.append(cps[i]);
  return out;
}

std::vector<std::string> PySplit(std::string_view s, const std::string* sep, int64_t maxsplit) {
  std::vector<std::string> out;
  if (sep != nullptr) {
    size_t pos = 0;
    while (maxsplit < 0 || static_cast<int64_t>(out.size()) < maxsplit) {
      const size_t hit = s.find(*sep, pos);
      if (hit == std::string_view::npos) break;
      out.emplace_back(s.substr(pos, hit - pos));
      pos = hit + sep->size();
    }
    out.emplace_back(s.substr(pos));
    return out;
  }
  // Whitespace split: runs of whitespace separate, leading/trailing whitespace is dropped.
  std::vector<std::string_view> cps = SplitCodePoints(s);
  size_t i = 0;
  while (true) {
    while (i < cps.size() && IsPySpace(DecodeCodePoint(cps[i]))) ++i;
    if (i == cps.size()) break;
    if (maxsplit >= 0 && static_cast<int64_t>(out.size()) == maxsplit) {
      // The rest, with only its trailing whitespace kept, is the last piece.
      std::string rest;
      for (size_t k = i; k < cps.size(); ++k) rest.append(cps[k]);
      out.push_back(rest);
      break;
    }
    std::string word;
    while (i < cps.size() && !IsPySpace(DecodeCodePoint(cps[i]))) word.append(cps[i++]);
    out.push_back(word);
  }
  return out;
}

std::vector<std::string> PyRSplit(std::string_view s, const std::string* sep, int64_t maxsplit) {
  if (maxsplit < 0) return PySplit(s, sep, -1);
  std::vector<std::string> out;
  if (sep != nullptr) {
    size_t end = s.size();
    while (static_cast<int64_t>(out.size()) < maxsplit) {
      if (end < sep->size()) break;
      const size_t hit = s.rfind(*sep, end - sep->size());
      if (hit == std::string_view::npos) break;
      out.emplace_back(s.substr(hit + sep->size(), end - hit - sep->size()));
      end = hit;
    }
    out.emplace_back(s.substr(0, end));
  } else {
    std::vector<std::string_view> cps = SplitCodePoints(s);
    size_t i = cps.size();
    while (true) {
      while (i > 0 && IsPySpace(DecodeCodePoint(cps[i - 1]))) --i;
      if (i == 0) break;
      if (static_cast<int64_t>(out.size()) == maxsplit) {
        std::string rest;
        for (size_t k = 0; k < i; ++k) rest.append(cps[k]);
        out.push_back(rest);
        break;
      }
      size_t j = i;
      while (j > 0 && !IsPySpace(DecodeCodePoint(cps[j - 1]))) --j;
      std::string word;
      for (size_t k = j; k < i; ++k) word.append(cps[k]);
      out.push_back(word);
      i = j;
    }
  }
  std::reverse(out.begin(), out.end());
  return out;
}

std::string PyReplace(std::string_view s, std::string_view old_s, std::string_view new_s,
                      int64_t count) {
  std::string out;
  if (old_s.empty()) {
    std::vector<std::string_view> cps = SplitCodePoints(s);
    int64_t done = 0;
    for (size_t i = 0; i <= cps.size(); ++i) {
      if (count < 0 || done < count) {
        CheckStringSize(out.size() + new_s.size() + s.size());
        out.append(new_s);
        ++done;
      }
      if (i < cps.size()) out.append(cps[i]);
    }
    return out;
  }
  size_t pos = 0;
  int64_t done = 0;
  while (count < 0 || done < count) {
    const size_t hit = s.find(old_s, pos);
    if (hit == std::string_view::npos) break;
    CheckStringSize(out.size() + (hit - pos) + new_s.size() + (s.size() - hit));
    out.append(s.substr(pos, hit - pos));
    out.append(new_s);
    pos = hit + old_s.size();
    ++done;
  }
  out.append(s.substr(pos));
  return out;
}

std::string PyUpper(std::string_view s) { return MapCodePoints(s, ToUpper); }
std::string PyLower(std::string_view s) { return MapCodePoints(s, ToLower); }

std::string PyTitle(std::string_view s) {
  bool prev_cased = false;
  return MapCodePoints(s, [&](uint32_t cp) {
    const uint32_t r = prev_cased ? ToLower(cp) : ToUpper(cp);
    prev_cased = IsCased(cp);
    return r;
  });
}

std::string PyCapitalize(std::string_view s) {
  bool first = true;
  return MapCodePoints(s, [&](uint32_t cp) {
    const uint32_t r = first ? ToUpper(cp) : ToLower(cp);
    first = false;
    return r;
  });
}

std::string JinjaTitle(std::string_view s) {
  // Jinja's do_title: split on runs of [-\s({\[<], upper-case each piece's first character and
  // lower-case the rest.
  auto is_sep = [](uint32_t cp) {
    return cp == '-' || cp == '(' || cp == '{' || cp == '[' || cp == '<' || IsPySpace(cp);
  };
  bool word_start = true;
  return MapCodePoints(s, [&](uint32_t cp) {
    if (is_sep(cp)) {
      word_start = true;
      return cp;
    }
    const uint32_t r = word_start ? ToUpper(cp) : ToLower(cp);
    word_start = false;
    return r;
  });
}

}  // namespace spqr::jinja
