#include "engine/tokenizer/tokenizer.h"

#include <algorithm>
#include <filesystem>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "engine/tokenizer/hf_tokenizer.h"
#include "engine/tokenizer/sentencepiece_tokenizer.h"

namespace spqr {

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::Open(const std::string& path, int32_t bos_id,
                                                           std::vector<int32_t> eos_ids) {
  if (absl::EndsWith(path, ".json")) return HfTokenizer::Open(path, bos_id, std::move(eos_ids));
  return SentencePieceTokenizer::Open(path, bos_id, std::move(eos_ids));
}

bool Tokenizer::IsEos(int32_t id) const {
  return std::find(eos_ids_.begin(), eos_ids_.end(), id) != eos_ids_.end();
}

absl::Status Tokenizer::AddEosIds(const std::vector<int32_t>& ids, const std::string& source) {
  for (int32_t id : ids) {
    if (id < 0) continue;
    if (id >= vocab_size()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "eos id ", id, " is outside the vocabulary of ", source, " (", vocab_size(), " pieces)"));
    }
    if (!IsEos(id)) eos_ids_.push_back(id);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Tokenizer>> OpenModelTokenizer(const std::string& dir,
                                                              int32_t bos_id,
                                                              std::vector<int32_t> eos_ids,
                                                              std::string* note) {
  namespace fs = std::filesystem;
  const std::string json_path = (fs::path(dir) / "tokenizer.json").string();
  const std::string sp_path = (fs::path(dir) / "tokenizer.model").string();
  const bool has_json = fs::is_regular_file(json_path), has_sp = fs::is_regular_file(sp_path);
  if (!has_json && !has_sp) {
    return absl::NotFoundError(absl::StrCat(
        dir, ": no tokenizer (neither tokenizer.json nor a SentencePiece tokenizer.model)"));
  }
  if (!has_json) return SentencePieceTokenizer::Open(sp_path, bos_id, std::move(eos_ids));
  auto hf = HfTokenizer::Open(json_path, bos_id, eos_ids);
  if (hf.ok() || !has_sp || !absl::IsUnimplemented(hf.status())) return hf;
  if (note != nullptr) {
    *note = absl::StrCat("using tokenizer.model: tokenizer.json is not supported (",
                         hf.status().message(), ")");
  }
  return SentencePieceTokenizer::Open(sp_path, bos_id, std::move(eos_ids));
}

}  // namespace spqr
