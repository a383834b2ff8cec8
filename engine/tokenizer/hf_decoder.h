// tokenizer.json "decoder": Sequence, ByteLevel, Metaspace, Replace, ByteFallback, Fuse, Strip:
// each a port of the Hugging Face tokenizers decoder of that name, applied to the list of token
// strings in turn and joined at the end. Anything else is a load error naming it.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace spqr {

class HfDecoder {
 public:
  virtual ~HfDecoder() = default;
  // Transforms the token strings (the decoder chain step of Hugging Face's Decoder trait).
  virtual void DecodeChain(std::vector<std::string>* tokens) const = 0;
};

// Parses a decoder object; null gives nullptr (tokens are joined with spaces, as tokenizers does).
absl::StatusOr<std::unique_ptr<HfDecoder>> ParseHfDecoder(const nlohmann::json& j);

}  // namespace spqr
