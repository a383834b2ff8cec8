// Streaming text output: incremental detokenization and stop-string matching.
//
// IncrementalDetokenizer turns a growing token sequence into text deltas that never split a UTF-8
// character. It decodes a small window of recent tokens (the Hugging Face TGI / vLLM method):
// text is released only when the window's decoding grows and does not end in U+FFFD, the
// replacement character both tokenizer kinds produce for an incomplete UTF-8 sequence at the end
// (SentencePiece and tokenizer.json's ByteFallback decoder per byte-fallback token, the ByteLevel
// decoder for the incomplete bytes; docs/tokenizers.md). Windows start where earlier text was
// released, so on character boundaries. Decoding a window (rather than each token alone) keeps
// the word-boundary spaces that SentencePiece (and tokenizer.json's Metaspace and Strip decoders)
// drop at the start of a decode: the window starts with a few prompt tokens.
//
// StopStringMatcher finds stop strings in that text across token boundaries. Text that could
// still become the beginning of a stop string is held back until it is decided; the matched
// string and everything after it are never released.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace spqr {

// Ids -> text, like Tokenizer::Decode (special tokens give no text; invalid UTF-8 bytes decode
// to U+FFFD).
using DecodeFn = std::function<std::string(std::span<const int32_t>)>;

class IncrementalDetokenizer {
 public:
  // How many trailing prompt tokens seed the window (enough for SentencePiece's space handling).
  static constexpr size_t kContextTokens = 6;

  // `prompt` is the request's prompt; only its last kContextTokens tokens are kept, as context.
  IncrementalDetokenizer(DecodeFn decode, std::span<const int32_t> prompt);

  // Adds one generated token; returns the newly completed text (often empty while a multi-byte
  // character is incomplete).
  std::string Append(int32_t token);
  // Returns whatever text is still unreleased (an incomplete character decodes as U+FFFD). Call
  // once, when the sequence ends.
  std::string Flush();

 private:
  DecodeFn decode_;
  std::vector<int32_t> tokens_;  // the window: context + generated tokens since prefix_offset_
  size_t prefix_offset_ = 0;     // tokens_[prefix_offset_, read_offset_) decode to released text
  size_t read_offset_ = 0;
};

class StopStringMatcher {
 public:
  // Empty stop strings are ignored.
  explicit StopStringMatcher(std::vector<std::string> stop_strings);

  struct Result {
    std::string text;      // safe to release now
    bool matched = false;  // a stop string was found; `text` ends right before it
    std::string stop_string;
  };
  // Appends `text` to the held-back text and releases what can no longer start a stop string.
  // When several stop strings match, the one that starts first wins (then the first listed).
  Result Push(std::string_view text);
  // The held-back text, released when the sequence ends for another reason.
  std::string Flush();

  bool empty() const { return stop_strings_.empty(); }

 private:
  std::vector<std::string> stop_strings_;
  std::string held_;
};

}  // namespace spqr
