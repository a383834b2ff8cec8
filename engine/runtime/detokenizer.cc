#include "engine/runtime/detokenizer.h"

#include <algorithm>
#include <utility>

namespace spqr {
namespace {

constexpr std::string_view kReplacementChar = "\xEF\xBF\xBD";  // U+FFFD in UTF-8

bool EndsWith(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

}  // namespace

IncrementalDetokenizer::IncrementalDetokenizer(DecodeFn decode, std::span<const int32_t> prompt)
    : decode_(std::move(decode)) {
  const size_t context = std::min(prompt.size(), kContextTokens);
  tokens_.assign(prompt.end() - context, prompt.end());
  prefix_offset_ = 0;
  read_offset_ = tokens_.size();
}

std::string IncrementalDetokenizer::Append(int32_t token) {
  tokens_.push_back(token);
  const std::span<const int32_t> all(tokens_);
  const std::string prefix_text =
      decode_(all.subspan(prefix_offset_, read_offset_ - prefix_offset_));
  const std::string new_text = decode_(all.subspan(prefix_offset_));
  if (new_text.size() <= prefix_text.size() || EndsWith(new_text, kReplacementChar)) {
    return "";  // nothing new, or the last character is still incomplete
  }
  std::string delta = new_text.substr(prefix_text.size());
  // Slide the window: the released tokens become the new prefix context.
  prefix_offset_ = read_offset_;
  read_offset_ = tokens_.size();
  // Drop tokens before the window so the buffer stays small on long generations.
  if (prefix_offset_ > 64) {
    tokens_.erase(tokens_.begin(), tokens_.begin() + prefix_offset_);
    read_offset_ -= prefix_offset_;
    prefix_offset_ = 0;
  }
  return delta;
}

std::string IncrementalDetokenizer::Flush() {
  const std::span<const int32_t> all(tokens_);
  const std::string prefix_text =
      decode_(all.subspan(prefix_offset_, read_offset_ - prefix_offset_));
  const std::string new_text = decode_(all.subspan(prefix_offset_));
  prefix_offset_ = read_offset_ = tokens_.size();
  if (new_text.size() <= prefix_text.size()) return "";
  return new_text.substr(prefix_text.size());
}

StopStringMatcher::StopStringMatcher(std::vector<std::string> stop_strings) {
  for (std::string& s : stop_strings) {
    if (!s.empty()) stop_strings_.push_back(std::move(s));
  }
}

StopStringMatcher::Result StopStringMatcher::Push(std::string_view text) {
  Result result;
  held_.append(text);
  if (stop_strings_.empty()) {
    result.text = std::move(held_);
    held_.clear();
    return result;
  }
  // A full match anywhere in the held text: the earliest start wins.
  size_t best_pos = std::string::npos;
  const std::string* best = nullptr;
  for (const std::string& stop : stop_strings_) {
    const size_t pos = held_.find(stop);
    if (pos != std::string::npos && pos < best_pos) {
      best_pos = pos;
      best = &stop;
    }
  }
  if (best != nullptr) {
    result.matched = true;
    result.stop_string = *best;
    result.text = held_.substr(0, best_pos);
    held_.clear();
    return result;
  }
  // Hold back the longest suffix that is a proper prefix of some stop string. Such a suffix
  // starts where a stop string's first character would, so the cut is on a UTF-8 boundary.
  size_t keep_from = held_.size();
  for (const std::string& stop : stop_strings_) {
    const size_t max_len = std::min(held_.size(), stop.size() - 1);
    for (size_t len = max_len; len > 0; --len) {
      const size_t start = held_.size() - len;
      if (start >= keep_from) break;  // a longer hold-back was already found
      if (std::string_view(held_).substr(start) == std::string_view(stop).substr(0, len)) {
        keep_from = start;
        break;
      }
    }
  }
  result.text = held_.substr(0, keep_from);
  held_.erase(0, keep_from);
  return result;
}

std::string StopStringMatcher::Flush() {
  std::string out = std::move(held_);
  held_.clear();
  return out;
}

}  // namespace spqr
