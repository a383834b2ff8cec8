// The model's tokenizer: text <-> token ids, with the bos/eos ids the model uses.
//
// Two implementations sit behind this interface:
//   "sentencepiece"  a SentencePiece tokenizer.model (sentencepiece_tokenizer.h)
//   "hf-bpe"         a Hugging Face tokenizers tokenizer.json with a BPE model: byte-level BPE
//                    (GPT-2, Llama 3, Qwen2) or SentencePiece-style BPE with byte fallback
//                    (Llama 2, Mistral exports) (hf_tokenizer.h)
// OpenModelTokenizer() picks one for a model directory (docs/tokenizers.md explains the choice).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace spqr {

class Tokenizer {
 public:
  // Loads one tokenizer file: "*.json" is read as a Hugging Face tokenizer.json (its directory's
  // tokenizer_config.json / special_tokens_map.json are read too), anything else as a SentencePiece
  // model. bos_id < 0 means "use the tokenizer's own"; eos_ids empty likewise (see the
  // implementations for what "own" means).
  static absl::StatusOr<std::unique_ptr<Tokenizer>> Open(const std::string& path, int32_t bos_id,
                                                         std::vector<int32_t> eos_ids);
  virtual ~Tokenizer() = default;

  // Text -> ids, with bos prepended when `add_bos` and the model has one. Invalid UTF-8 in `text`
  // is read as U+FFFD (one per maximal invalid subsequence, like Python's errors="replace").
  virtual std::vector<int32_t> Encode(std::string_view text, bool add_bos) const = 0;
  // Ids -> text (special/control tokens produce no text; ids outside the vocabulary are skipped;
  // invalid UTF-8 byte sequences decode to U+FFFD).
  virtual std::string Decode(const std::vector<int32_t>& ids) const = 0;
  // The raw piece string of one id (for logprob displays); "" for ids outside the vocabulary.
  virtual std::string IdToPiece(int32_t id) const = 0;
  virtual int32_t vocab_size() const = 0;
  // Which implementation: "sentencepiece" or "hf-bpe" (reported by GetModelInfo).
  virtual std::string kind() const = 0;

  // The most text bytes one token covers (the longest piece; at least 1). A text longer than
  // n x max_piece_bytes() bytes needs more than n tokens, unless normalization drops bytes (runs of
  // whitespace, Unicode composition) or unknown characters merge into one unknown token: the
  // server refuses such text prompts on their byte length before tokenizing them.
  int32_t max_piece_bytes() const { return max_piece_bytes_; }
  int32_t bos_id() const { return bos_id_; }
  const std::vector<int32_t>& eos_ids() const { return eos_ids_; }
  bool IsEos(int32_t id) const;

 protected:
  Tokenizer() = default;
  // Adds the non-negative ids of `ids` to eos_ids_ (once each); an id >= vocab_size() is an error
  // naming `source`.
  absl::Status AddEosIds(const std::vector<int32_t>& ids, const std::string& source);

  int32_t bos_id_ = -1;
  std::vector<int32_t> eos_ids_;
  int32_t max_piece_bytes_ = 1;
};

// The tokenizer of a model directory: tokenizer.json when present (what transformers' fast
// tokenizers, the default, use), else tokenizer.model. When tokenizer.json uses a construct this
// implementation does not support and a tokenizer.model exists too, the tokenizer.model is used
// and `*note` (if given) says why; otherwise the load error names the construct.
absl::StatusOr<std::unique_ptr<Tokenizer>> OpenModelTokenizer(const std::string& dir,
                                                              int32_t bos_id,
                                                              std::vector<int32_t> eos_ids,
                                                              std::string* note = nullptr);

}  // namespace spqr
