#include "engine/tokenizer/hf_added_tokens.h"

#include <algorithm>

#include "engine/tokenizer/utf8.h"
#include "engine/util/status_macros.h"

namespace spqr {
namespace {

// Rust regex's \w (tokenizers' STARTS_WITH_WORD / ENDS_WITH_WORD use it).
constexpr const char* kWord = R"([\p{Alphabetic}\p{M}\p{Nd}\p{Pc}\p{Join_Control}])";

// The character that ends at / starts at byte `pos` of valid UTF-8 `text`.
std::string_view CharBefore(std::string_view text, size_t pos) {
  size_t begin = pos - 1;
  while (begin > 0 && (static_cast<unsigned char>(text[begin]) & 0xC0) == 0x80) --begin;
  return text.substr(begin, pos - begin);
}
std::string_view CharAt(std::string_view text, size_t pos) {
  return text.substr(pos, utf8::CharLen(static_cast<unsigned char>(text[pos])));
}

}  // namespace

absl::StatusOr<std::unique_ptr<HfAddedTokenMatcher>> HfAddedTokenMatcher::Create() {
  std::unique_ptr<HfAddedTokenMatcher> m(new HfAddedTokenMatcher());
  ASSIGN_OR_RETURN(m->word_, HfRegex::Compile(std::string("^") + kWord + "\\z"));
  ASSIGN_OR_RETURN(m->space_, HfRegex::Compile(R"(^\s\z)"));
  return m;
}

void HfAddedTokenMatcher::Add(std::string pattern, const HfAddedToken* token) {
  if (pattern.empty()) return;
  tokens_.push_back({std::move(pattern), token});
  const size_t index = tokens_.size() - 1;
  std::vector<size_t>& list = by_first_[static_cast<unsigned char>(tokens_[index].pattern[0])];
  // Longest first; among equal lengths in insertion order.
  const size_t size = tokens_[index].pattern.size();
  list.insert(
      std::upper_bound(list.begin(), list.end(), size,
                       [&](size_t s, size_t other) { return s > tokens_[other].pattern.size(); }),
      index);
}

std::vector<HfAddedTokenMatcher::Match> HfAddedTokenMatcher::Find(std::string_view text) const {
  std::vector<Match> matches;
  if (tokens_.empty()) return matches;
  size_t covered = 0;  // the end of the previous match (start_offset in tokenizers)
  size_t pos = 0;
  while (pos < text.size()) {
    // The leftmost position where some token starts, and the longest token there.
    const Entry* found = nullptr;
    for (; pos < text.size() && found == nullptr; ++pos) {
      const auto it = by_first_.find(static_cast<unsigned char>(text[pos]));
      if (it == by_first_.end()) continue;
      for (size_t index : it->second) {
        const std::string& p = tokens_[index].pattern;
        if (text.compare(pos, p.size(), p) == 0) {
          found = &tokens_[index];
          break;
        }
      }
      if (found != nullptr) break;
    }
    if (found == nullptr) break;
    size_t begin = pos, end = pos + found->pattern.size();
    pos = end;
    const HfAddedToken& token = *found->token;
    if (token.single_word) {
      const bool start_ok = begin == 0 || !word_->Search(CharBefore(text, begin));
      const bool stop_ok = end == text.size() || !word_->Search(CharAt(text, end));
      if (!start_ok || !stop_ok) continue;
    }
    if (token.lstrip) {
      size_t new_begin = begin;
      while (new_begin > 0 && space_->Search(CharBefore(text, new_begin))) {
        new_begin -= CharBefore(text, new_begin).size();
      }
      begin = std::max(new_begin, covered);
    }
    if (token.rstrip) {
      while (end < text.size() && space_->Search(CharAt(text, end)))
        end += CharAt(text, end).size();
      pos = std::max(pos, end);
    }
    matches.push_back({begin, end, token.id});
    covered = end;
  }
  return matches;
}

}  // namespace spqr
