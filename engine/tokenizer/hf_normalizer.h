// tokenizer.json "normalizer": Sequence, Replace (String or Regex pattern), Prepend, NFC, NFD,
// NFKC, NFKD. Anything else is a load error naming it.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace spqr {

class HfNormalizer {
 public:
  virtual ~HfNormalizer() = default;
  // Rewrites `text` (valid UTF-8, one split of the input between added tokens) in place.
  virtual void Normalize(std::string* text) const = 0;
};

// Parses a normalizer object; null gives nullptr (no normalization).
absl::StatusOr<std::unique_ptr<HfNormalizer>> ParseHfNormalizer(const nlohmann::json& j);

}  // namespace spqr
