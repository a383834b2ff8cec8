// A Hugging Face tokenizers tokenizer.json with a BPE model behind the Tokenizer interface
// (kind "hf-bpe"), matching the tokenizers library's encode(text) / decode(ids,
// skip_special_tokens=True):
//   1. added tokens (tokenizer.json "added_tokens") are found first, leftmost-longest, and never
//      split: those with normalized=false in the raw text, the others in the normalized text of
//      the rest; single_word, lstrip and rstrip behave as in tokenizers;
//   2. the rest is normalized (hf_normalizer.h), pre-tokenized (hf_pre_tokenizer.h) and each
//      piece is BPE-merged (hf_bpe.h);
//   3. with add_bos, the post-processor's tokens are added around the text (TemplateProcessing,
//      RobertaProcessing, BertProcessing, ByteLevel, Sequence); for tokenizer_config.json
//      classes LlamaTokenizer(Fast) and GemmaTokenizer(Fast), whose transformers class rebuilds
//      the post-processor, add_bos_token (default true) / add_eos_token (default false) decide.
// Decoding drops special added tokens and runs the decoder chain (hf_decoder.h).
// Unsupported constructs (other models, normalizers, pre-tokenizers, decoders, post-processors)
// are load errors that name the construct. "truncation" and "padding" are ignored.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "engine/tokenizer/tokenizer.h"
#include "nlohmann/json_fwd.hpp"

namespace spqr {

class HfTokenizer final : public Tokenizer {
 public:
  // Loads `path` (a tokenizer.json) and, from its directory, tokenizer_config.json and
  // special_tokens_map.json when present (the tokenizer class, add_bos_token/add_eos_token and
  // the bos/eos token strings). bos_id >= 0 replaces the single bos token the post-processor
  // adds (a tokenizer that adds none keeps adding none: bos_id() is then -1). eos_ids without a
  // non-negative id: the eos_token of tokenizer_config.json (else special_tokens_map.json).
  static absl::StatusOr<std::unique_ptr<Tokenizer>> Open(const std::string& path, int32_t bos_id,
                                                         std::vector<int32_t> eos_ids);
  // The same from the texts of tokenizer.json and tokenizer_config.json ("" for none); `name`
  // prefixes errors. For tests and fuzzing.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> Parse(std::string_view tokenizer_json,
                                                          std::string_view tokenizer_config,
                                                          const std::string& name, int32_t bos_id,
                                                          std::vector<int32_t> eos_ids);
  ~HfTokenizer() override;

  std::vector<int32_t> Encode(std::string_view text, bool add_bos) const override;
  std::string Decode(const std::vector<int32_t>& ids) const override;
  std::string IdToPiece(int32_t id) const override;
  int32_t vocab_size() const override;
  std::string kind() const override { return "hf-bpe"; }

 private:
  struct Impl;
  HfTokenizer();
  static absl::StatusOr<std::unique_ptr<Tokenizer>> Build(const nlohmann::json& j,
                                                          const nlohmann::json& config,
                                                          const nlohmann::json& special_map,
                                                          const std::string& path, int32_t bos_id,
                                                          std::vector<int32_t> eos_ids);
  static absl::StatusOr<std::unique_ptr<Tokenizer>> BuildUnchecked(
      const nlohmann::json& j, nlohmann::json config, nlohmann::json special_map,
      const std::string& path, int32_t bos_id, std::vector<int32_t> eos_ids);
  std::unique_ptr<Impl> impl_;
};

}  // namespace spqr
