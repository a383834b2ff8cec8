#include "engine/tokenizer/sentencepiece_tokenizer.h"

#include <sys/stat.h>

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "engine/util/status_macros.h"

// Debian's Abseil is built with its own absl::string_view class (ABSL_OPTION_USE_STD_STRING_VIEW
// is 0), while sentencepiece_processor.h declares `namespace absl { using std::string_view; }`
// and was compiled against std::string_view. Including both would redefine absl::string_view, so
// the SentencePiece header sees a private namespace instead; the alias still resolves to
// std::string_view, so the declarations (and their mangled names) match the library.
#define absl spqr_sentencepiece_absl
#include <sentencepiece_processor.h>
#undef absl

namespace spqr {

absl::StatusOr<std::unique_ptr<Tokenizer>> SentencePieceTokenizer::Open(
    const std::string& path, int32_t bos_id, std::vector<int32_t> eos_ids) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) {
    return absl::NotFoundError(absl::StrCat("tokenizer model ", path, ": not found"));
  }
  std::unique_ptr<SentencePieceTokenizer> tokenizer(new SentencePieceTokenizer());
  tokenizer->sp_ = std::make_unique<sentencepiece::SentencePieceProcessor>();
  const sentencepiece::util::Status loaded = tokenizer->sp_->Load(path);
  if (!loaded.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tokenizer model ", path, ": not a valid SentencePiece model: ", loaded.ToString()));
  }
  const int32_t vocab = tokenizer->vocab_size();
  auto check_id = [&](const char* what, int32_t id) -> absl::Status {
    if (id >= vocab) {
      return absl::InvalidArgumentError(absl::StrCat(
          what, " id ", id, " is outside the vocabulary of ", path, " (", vocab, " pieces)"));
    }
    return absl::OkStatus();
  };

  // Negative ids mean "not given" (the config had none); fall back to the model's own.
  tokenizer->bos_id_ = bos_id >= 0 ? bos_id : tokenizer->sp_->bos_id();
  if (auto status = check_id("bos", tokenizer->bos_id_); !status.ok()) return status;
  RETURN_IF_ERROR(tokenizer->AddEosIds(eos_ids, path));
  if (tokenizer->eos_ids_.empty() && tokenizer->sp_->eos_id() >= 0) {
    tokenizer->eos_ids_.push_back(tokenizer->sp_->eos_id());
  }
  // The longest text one token stands for: a normal piece's UTF-8 bytes, with the word-boundary
  // marker U+2581 (3 bytes) counted as the one space it decodes to; byte-fallback pieces are 1.
  constexpr std::string_view kSpaceMarker = "\xe2\x96\x81";
  int32_t longest = 1;
  for (int32_t id = 0; id < vocab; ++id) {
    if (tokenizer->sp_->IsControl(id) || tokenizer->sp_->IsUnknown(id) ||
        tokenizer->sp_->IsByte(id)) {
      continue;
    }
    const std::string piece = tokenizer->sp_->IdToPiece(id);
    int32_t bytes = static_cast<int32_t>(piece.size());
    for (size_t at = piece.find(kSpaceMarker); at != std::string::npos;
         at = piece.find(kSpaceMarker, at + kSpaceMarker.size())) {
      bytes -= 2;
    }
    longest = std::max(longest, bytes);
  }
  tokenizer->max_piece_bytes_ = longest;
  return tokenizer;
}

SentencePieceTokenizer::~SentencePieceTokenizer() = default;

std::vector<int32_t> SentencePieceTokenizer::Encode(std::string_view text, bool add_bos) const {
  std::vector<int> pieces;
  // Encode fails only when no model is loaded, which Open() rules out.
  sp_->Encode(text, &pieces).IgnoreError();
  std::vector<int32_t> ids;
  ids.reserve(pieces.size() + 1);
  if (add_bos && bos_id_ >= 0) ids.push_back(bos_id_);
  ids.insert(ids.end(), pieces.begin(), pieces.end());
  return ids;
}

std::string SentencePieceTokenizer::Decode(const std::vector<int32_t>& ids) const {
  // The model's vocab_size is often padded beyond the tokenizer's pieces; such ids (and negative
  // ones) have no text, and SentencePiece would reject the whole sequence because of them.
  const int32_t vocab = vocab_size();
  std::vector<int> valid;
  valid.reserve(ids.size());
  for (int32_t id : ids) {
    if (id >= 0 && id < vocab) valid.push_back(id);
  }
  std::string text;
  sp_->Decode(valid, &text).IgnoreError();
  return text;
}

std::string SentencePieceTokenizer::IdToPiece(int32_t id) const {
  if (id < 0 || id >= vocab_size()) return "";
  return sp_->IdToPiece(id);
}

int32_t SentencePieceTokenizer::vocab_size() const { return sp_->GetPieceSize(); }

}  // namespace spqr
