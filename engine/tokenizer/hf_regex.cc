#include "engine/tokenizer/hf_regex.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "absl/strings/str_cat.h"
#include "engine/tokenizer/utf8.h"

namespace spqr {
namespace {

// \s -> \p{White_Space}, \S -> \P{White_Space} (see the header); other escapes are copied.
std::string RewriteSpaceClasses(std::string_view pattern) {
  std::string out;
  out.reserve(pattern.size() + 16);
  for (size_t i = 0; i < pattern.size(); ++i) {
    if (pattern[i] == '\\' && i + 1 < pattern.size()) {
      const char next = pattern[i + 1];
      if (next == 's') {
        out.append("\\p{White_Space}");
      } else if (next == 'S') {
        out.append("\\P{White_Space}");
      } else {
        out.push_back('\\');
        out.push_back(next);
      }
      ++i;
    } else {
      out.push_back(pattern[i]);
    }
  }
  return out;
}

// One match data block per thread (group 0 only is read), reused across patterns and calls.
pcre2_match_data* ThreadMatchData() {
  struct Holder {
    pcre2_match_data* data = pcre2_match_data_create(1, nullptr);
    ~Holder() { pcre2_match_data_free(data); }
  };
  thread_local Holder holder;
  return holder.data;
}

}  // namespace

struct HfRegex::Impl {
  pcre2_code* code = nullptr;
  bool jit = false;
  ~Impl() {
    if (code != nullptr) pcre2_code_free(code);
  }
  // The first match at or after `from`, or false.
  bool Match(std::string_view text, size_t from, size_t* begin, size_t* end) const {
    pcre2_match_data* md = ThreadMatchData();
    const auto subject = reinterpret_cast<PCRE2_SPTR>(text.data());
    int rc = PCRE2_ERROR_JIT_STACKLIMIT;
    if (jit) rc = pcre2_jit_match(code, subject, text.size(), from, 0, md, nullptr);
    // The interpreter keeps its backtracking state on the heap: it handles the long runs (e.g.
    // 100k spaces against \s+(?!\S)) that can exhaust the JIT's machine stack.
    if (rc == PCRE2_ERROR_JIT_STACKLIMIT) {
      rc = pcre2_match(code, subject, text.size(), from, PCRE2_NO_UTF_CHECK, md, nullptr);
    }
    if (rc < 0) return false;  // no match (or PCRE2's match/heap limit: treated as none)
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
    *begin = ov[0];
    *end = ov[1];
    return true;
  }
};

absl::StatusOr<std::unique_ptr<HfRegex>> HfRegex::Compile(std::string_view pattern) {
  const std::string rewritten = RewriteSpaceClasses(pattern);
  int error = 0;
  PCRE2_SIZE offset = 0;
  pcre2_code* code =
      pcre2_compile(reinterpret_cast<PCRE2_SPTR>(rewritten.data()), rewritten.size(),
                    PCRE2_UTF | PCRE2_UCP | PCRE2_NO_UTF_CHECK, &error, &offset, nullptr);
  if (code == nullptr) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(error, message, sizeof(message));
    return absl::InvalidArgumentError(absl::StrCat("regex '", std::string(pattern),
                                                   "' does not compile (PCRE2 at offset ", offset,
                                                   "): ", reinterpret_cast<char*>(message)));
  }
  std::unique_ptr<HfRegex> regex(new HfRegex());
  regex->impl_ = std::make_unique<Impl>();
  regex->impl_->code = code;
  regex->impl_->jit = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
  return regex;
}

absl::StatusOr<std::unique_ptr<HfRegex>> HfRegex::Literal(std::string_view literal) {
  std::string quoted;
  for (char c : literal) {
    const bool word = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                      (static_cast<unsigned char>(c) >= 0x80);
    if (!word) quoted.push_back('\\');
    quoted.push_back(c);
  }
  // "\<space>" etc. are literal in PCRE2; a NUL byte needs \x00.
  std::string safe;
  for (size_t i = 0; i < quoted.size(); ++i) {
    if (quoted[i] == '\0') {
      if (!safe.empty() && safe.back() == '\\') safe.pop_back();
      safe.append("\\x{0}");
    } else {
      safe.push_back(quoted[i]);
    }
  }
  return Compile(safe);
}

HfRegex::~HfRegex() = default;

std::vector<std::pair<size_t, size_t>> HfRegex::FindAll(std::string_view text) const {
  std::vector<std::pair<size_t, size_t>> matches;
  size_t from = 0, begin, end;
  while (from <= text.size() && impl_->Match(text, from, &begin, &end)) {
    if (end == begin) {
      if (begin >= text.size()) break;
      from = begin + utf8::CharLen(static_cast<unsigned char>(text[begin]));
      continue;
    }
    matches.emplace_back(begin, end);
    from = end;
  }
  return matches;
}

bool HfRegex::Search(std::string_view text) const {
  size_t begin, end;
  return impl_->Match(text, 0, &begin, &end);
}

}  // namespace spqr
