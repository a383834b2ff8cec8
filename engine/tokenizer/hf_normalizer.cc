#include "engine/tokenizer/hf_normalizer.h"

#include <utf8proc.h>

#include <cstdlib>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/tokenizer/hf_json.h"
#include "engine/tokenizer/hf_regex.h"
#include "engine/util/status_macros.h"

namespace spqr {
namespace {

class SequenceNormalizer final : public HfNormalizer {
 public:
  explicit SequenceNormalizer(std::vector<std::unique_ptr<HfNormalizer>> steps)
      : steps_(std::move(steps)) {}
  void Normalize(std::string* text) const override {
    for (const auto& step : steps_) step->Normalize(text);
  }

 private:
  std::vector<std::unique_ptr<HfNormalizer>> steps_;
};

class ReplaceNormalizer final : public HfNormalizer {
 public:
  ReplaceNormalizer(std::unique_ptr<HfRegex> regex, std::string content)
      : regex_(std::move(regex)), content_(std::move(content)) {}
  void Normalize(std::string* text) const override { *text = ReplaceAll(*regex_, *text, content_); }

 private:
  std::unique_ptr<HfRegex> regex_;
  std::string content_;
};

// Prepends `prefix` to a non-empty text.
class PrependNormalizer final : public HfNormalizer {
 public:
  explicit PrependNormalizer(std::string prefix) : prefix_(std::move(prefix)) {}
  void Normalize(std::string* text) const override {
    if (!text->empty()) text->insert(0, prefix_);
  }

 private:
  std::string prefix_;
};

// Unicode normalization forms through utf8proc.
class UnicodeNormalizer final : public HfNormalizer {
 public:
  explicit UnicodeNormalizer(int options) : options_(options) {}
  void Normalize(std::string* text) const override {
    bool ascii = true;
    for (char c : *text) ascii &= static_cast<unsigned char>(c) < 0x80;
    if (ascii) return;  // every normalization form leaves ASCII unchanged
    utf8proc_uint8_t* out = nullptr;
    const utf8proc_ssize_t n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(text->data()),
                                            static_cast<utf8proc_ssize_t>(text->size()), &out,
                                            static_cast<utf8proc_option_t>(options_));
    if (n >= 0) text->assign(reinterpret_cast<const char*>(out), static_cast<size_t>(n));
    std::free(out);  // on error (invalid UTF-8, ruled out by the caller) the text stays as is
  }

 private:
  int options_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<HfNormalizer>> ParseHfNormalizer(const nlohmann::json& j) {
  if (j.is_null()) return nullptr;
  ASSIGN_OR_RETURN(std::string type, HfType(j, "normalizer"));
  if (type == "Sequence") {
    std::vector<std::unique_ptr<HfNormalizer>> steps;
    ASSIGN_OR_RETURN(const nlohmann::json* list, HfArray(j, "normalizers", "Sequence normalizer"));
    for (const nlohmann::json& item : *list) {
      ASSIGN_OR_RETURN(std::unique_ptr<HfNormalizer> step, ParseHfNormalizer(item));
      if (step != nullptr) steps.push_back(std::move(step));
    }
    return std::make_unique<SequenceNormalizer>(std::move(steps));
  }
  if (type == "Replace") {
    ASSIGN_OR_RETURN(std::unique_ptr<HfRegex> regex, HfPattern(j, "Replace normalizer"));
    ASSIGN_OR_RETURN(std::string content, HfString(j, "content", "Replace normalizer"));
    return std::make_unique<ReplaceNormalizer>(std::move(regex), std::move(content));
  }
  if (type == "Prepend") {
    ASSIGN_OR_RETURN(std::string prefix, HfString(j, "prepend", "Prepend normalizer"));
    return std::make_unique<PrependNormalizer>(std::move(prefix));
  }
  constexpr int kStable = UTF8PROC_STABLE;
  if (type == "NFC") return std::make_unique<UnicodeNormalizer>(kStable | UTF8PROC_COMPOSE);
  if (type == "NFD") return std::make_unique<UnicodeNormalizer>(kStable | UTF8PROC_DECOMPOSE);
  if (type == "NFKC") {
    return std::make_unique<UnicodeNormalizer>(kStable | UTF8PROC_COMPOSE | UTF8PROC_COMPAT);
  }
  if (type == "NFKD") {
    return std::make_unique<UnicodeNormalizer>(kStable | UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT);
  }
  return absl::UnimplementedError(absl::StrCat(
      "normalizer type \"", type,
      "\" is not supported (supported: Sequence, Replace, Prepend, NFC, NFD, NFKC, NFKD)"));
}

}  // namespace spqr
