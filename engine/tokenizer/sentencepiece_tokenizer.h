// A SentencePiece tokenizer.model behind the Tokenizer interface (kind "sentencepiece").
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "engine/tokenizer/tokenizer.h"

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace spqr {

class SentencePieceTokenizer final : public Tokenizer {
 public:
  // Loads `path`. bos_id < 0: the model's own bos; eos_ids without a non-negative id: its own eos.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> Open(const std::string& path, int32_t bos_id,
                                                         std::vector<int32_t> eos_ids);
  ~SentencePieceTokenizer() override;

  std::vector<int32_t> Encode(std::string_view text, bool add_bos) const override;
  std::string Decode(const std::vector<int32_t>& ids) const override;
  std::string IdToPiece(int32_t id) const override;
  int32_t vocab_size() const override;
  std::string kind() const override { return "sentencepiece"; }

 private:
  SentencePieceTokenizer() = default;
  std::unique_ptr<sentencepiece::SentencePieceProcessor> sp_;
};

}  // namespace spqr
