// tokenizer.json "pre_tokenizer": Sequence, Split (String or Regex pattern, all five delimiter
// behaviors, invert), ByteLevel (GPT-2 regex and byte-to-unicode map) and Metaspace. Anything
// else is a load error naming it.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace spqr {

// One piece of the input on its way to the model.
struct HfPiece {
  std::string text;
  // The piece starts at offset 0 of the original input (Metaspace's prepend_scheme "first").
  // A piece split off at a later offset of such a piece does not.
  bool at_start = false;
};

class HfPreTokenizer {
 public:
  virtual ~HfPreTokenizer() = default;
  // Splits (and may rewrite) every piece; empty pieces are dropped.
  virtual void PreTokenize(std::vector<HfPiece>* pieces) const = 0;
};

// Parses a pre_tokenizer object; null gives nullptr (the whole split is one word).
absl::StatusOr<std::unique_ptr<HfPreTokenizer>> ParseHfPreTokenizer(const nlohmann::json& j);

// The GPT-2 byte-to-unicode map: byte b stands for the UTF-8 string ByteLevelChar(b) in vocab
// entries; ByteLevelByte inverts it (-1 for a code point that stands for no byte).
const std::string& ByteLevelChar(unsigned char b);
int ByteLevelByte(uint32_t code_point);

}  // namespace spqr
