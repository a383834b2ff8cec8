// The model's SentencePiece tokenizer (tokenizer.model) with the bos/eos ids of the model config.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace spqr {

class Tokenizer {
 public:
  // Loads `path` (a SentencePiece model). bos_id < 0 means "use the tokenizer's own"; eos_ids empty
  // likewise.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> Open(const std::string& path, int32_t bos_id,
                                                         std::vector<int32_t> eos_ids);
  ~Tokenizer();

  // Text -> ids, with bos prepended when `add_bos` and the model has one.
  std::vector<int32_t> Encode(std::string_view text, bool add_bos) const;
  // Ids -> text (special/control tokens produce no text).
  std::string Decode(const std::vector<int32_t>& ids) const;
  // The raw piece string of one id (for logprob displays).
  std::string IdToPiece(int32_t id) const;

  int32_t vocab_size() const;
  // The most text bytes one token covers (the longest piece; at least 1). A text longer than
  // n x max_piece_bytes() bytes needs more than n tokens, unless normalization drops bytes (runs of
  // whitespace) or unknown characters merge into one unknown token: the server refuses such text
  // prompts on their byte length before tokenizing them.
  int32_t max_piece_bytes() const { return max_piece_bytes_; }
  int32_t bos_id() const { return bos_id_; }
  const std::vector<int32_t>& eos_ids() const { return eos_ids_; }
  bool IsEos(int32_t id) const;

 private:
  Tokenizer() = default;
  std::unique_ptr<sentencepiece::SentencePieceProcessor> sp_;
  int32_t bos_id_ = -1;
  std::vector<int32_t> eos_ids_;
  int32_t max_piece_bytes_ = 1;
};

}  // namespace spqr
