// The added tokens of tokenizer.json: found in text before the model sees it, never split.
// A port of tokenizers' AddedVocabulary::find_matches (leftmost-longest; single_word, lstrip and
// rstrip; a discarded single_word match does not rescan its span).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/tokenizer/hf_regex.h"

namespace spqr {

struct HfAddedToken {
  int32_t id = -1;
  std::string content;
  bool single_word = false, lstrip = false, rstrip = false, normalized = true, special = false;
};

// One set of added tokens matched against one kind of text (raw or normalized).
class HfAddedTokenMatcher {
 public:
  struct Match {
    size_t begin, end;  // the span the token replaces (lstrip/rstrip widen it)
    int32_t id;
  };
  static absl::StatusOr<std::unique_ptr<HfAddedTokenMatcher>> Create();
  // `pattern` is the text to find (the content, or its normalized form); `token` must outlive this.
  void Add(std::string pattern, const HfAddedToken* token);
  bool empty() const { return tokens_.empty(); }
  std::vector<Match> Find(std::string_view text) const;

 private:
  HfAddedTokenMatcher() = default;
  struct Entry {
    std::string pattern;
    const HfAddedToken* token;
  };
  std::vector<Entry> tokens_;
  // First byte -> entries starting with it, longest first.
  std::unordered_map<unsigned char, std::vector<size_t>> by_first_;
  std::unique_ptr<HfRegex> word_, space_;  // one character: Rust regex's \w, \s
};

}  // namespace spqr
