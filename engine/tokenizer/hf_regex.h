// The regular expressions of tokenizer.json (Split pre-tokenizers, Replace normalizers/decoders),
// matched with PCRE2 in UTF + Unicode-property mode.
//
// Hugging Face tokenizers matches these patterns with Oniguruma, whose \s is the Unicode
// White_Space property; PCRE2's \s lacks U+0085 (NEXT LINE), so \s and \S are rewritten to
// \p{White_Space} / \P{White_Space} before compiling. Inputs must be valid UTF-8 (not checked).
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace spqr {

class HfRegex {
 public:
  // Compiles `pattern` (JIT-compiled where PCRE2 supports it); a syntax error names the pattern.
  static absl::StatusOr<std::unique_ptr<HfRegex>> Compile(std::string_view pattern);
  // A regex matching `literal` exactly (a tokenizer.json {"String": ...} pattern).
  static absl::StatusOr<std::unique_ptr<HfRegex>> Literal(std::string_view literal);
  ~HfRegex();
  HfRegex(const HfRegex&) = delete;
  HfRegex& operator=(const HfRegex&) = delete;

  // The non-overlapping leftmost matches of `text`, as [begin, end) byte offsets. Empty matches
  // are skipped (the search resumes one character later); the patterns of real tokenizers have
  // none. Thread-safe.
  std::vector<std::pair<size_t, size_t>> FindAll(std::string_view text) const;
  // Whether the pattern matches anywhere in `text`.
  bool Search(std::string_view text) const;

 private:
  HfRegex() = default;
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace spqr
