#include "engine/tokenizer/hf_pre_tokenizer.h"

#include <algorithm>
#include <array>
#include <utility>

#include "absl/strings/str_cat.h"
#include "engine/tokenizer/hf_json.h"
#include "engine/tokenizer/hf_regex.h"
#include "engine/tokenizer/utf8.h"
#include "engine/util/status_macros.h"

namespace spqr {
namespace {

// The pattern of the ByteLevel pre-tokenizer with use_regex (GPT-2's).
constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

struct ByteLevelTables {
  std::array<std::string, 256> chars;
  std::array<int, 512> bytes;  // code point -> byte; every mapped code point is < 512
  ByteLevelTables() {
    bytes.fill(-1);
    int n = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      const uint32_t cp = printable ? b : 256 + n++;
      utf8::Append(cp, &chars[b]);
      bytes[cp] = b;
    }
  }
};
const ByteLevelTables& Tables() {
  static const ByteLevelTables tables;
  return tables;
}

enum class Behavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

// (range, is_match) covering `text`: the matches and the gaps between them.
using Segments = std::vector<std::pair<std::pair<size_t, size_t>, bool>>;

Segments Segment(const std::vector<std::pair<size_t, size_t>>& matches, size_t size) {
  Segments out;
  size_t prev = 0;
  for (const auto& m : matches) {
    if (prev != m.first) out.push_back({{prev, m.first}, false});
    out.push_back({m, true});
    prev = m.second;
  }
  if (prev != size) out.push_back({{prev, size}, false});
  return out;
}

// The port of NormalizedString::split: which ranges become pieces under `behavior`.
std::vector<std::pair<size_t, size_t>> ApplyBehavior(const Segments& segments, Behavior behavior) {
  std::vector<std::pair<size_t, size_t>> out;
  bool previous_match = false;
  switch (behavior) {
    case Behavior::kIsolated:
      for (const auto& s : segments) out.push_back(s.first);
      break;
    case Behavior::kRemoved:
      for (const auto& s : segments) {
        if (!s.second) out.push_back(s.first);
      }
      break;
    case Behavior::kContiguous:
      for (const auto& [range, is_match] : segments) {
        if (is_match == previous_match && !out.empty()) {
          out.back().second = range.second;
        } else {
          out.push_back(range);
        }
        previous_match = is_match;
      }
      break;
    case Behavior::kMergedWithPrevious:
      for (const auto& [range, is_match] : segments) {
        if (is_match && !previous_match && !out.empty()) {
          out.back().second = range.second;
        } else {
          out.push_back(range);
        }
        previous_match = is_match;
      }
      break;
    case Behavior::kMergedWithNext:
      for (auto it = segments.rbegin(); it != segments.rend(); ++it) {
        const auto& [range, is_match] = *it;
        if (is_match && !previous_match && !out.empty()) {
          out.back().first = range.first;
        } else {
          out.push_back(range);
        }
        previous_match = is_match;
      }
      std::reverse(out.begin(), out.end());
      break;
  }
  return out;
}

// Replaces `piece` by its sub-ranges (non-empty ones) in `out`.
void EmitRanges(const HfPiece& piece, const std::vector<std::pair<size_t, size_t>>& ranges,
                std::vector<HfPiece>* out) {
  for (const auto& [begin, end] : ranges) {
    if (end <= begin) continue;
    out->push_back({piece.text.substr(begin, end - begin), piece.at_start && begin == 0});
  }
}

class SequencePreTokenizer final : public HfPreTokenizer {
 public:
  explicit SequencePreTokenizer(std::vector<std::unique_ptr<HfPreTokenizer>> steps)
      : steps_(std::move(steps)) {}
  void PreTokenize(std::vector<HfPiece>* pieces) const override {
    for (const auto& step : steps_) step->PreTokenize(pieces);
  }

 private:
  std::vector<std::unique_ptr<HfPreTokenizer>> steps_;
};

class SplitPreTokenizer final : public HfPreTokenizer {
 public:
  SplitPreTokenizer(std::unique_ptr<HfRegex> regex, Behavior behavior, bool invert)
      : regex_(std::move(regex)), behavior_(behavior), invert_(invert) {}
  void PreTokenize(std::vector<HfPiece>* pieces) const override {
    std::vector<HfPiece> out;
    out.reserve(pieces->size() * 2);
    for (const HfPiece& piece : *pieces) {
      Segments segments = Segment(regex_->FindAll(piece.text), piece.text.size());
      if (invert_) {
        for (auto& s : segments) s.second = !s.second;
      }
      EmitRanges(piece, ApplyBehavior(segments, behavior_), &out);
    }
    *pieces = std::move(out);
  }

 private:
  std::unique_ptr<HfRegex> regex_;
  Behavior behavior_;
  bool invert_;
};

class ByteLevelPreTokenizer final : public HfPreTokenizer {
 public:
  ByteLevelPreTokenizer(bool add_prefix_space, std::unique_ptr<HfRegex> regex)
      : add_prefix_space_(add_prefix_space), regex_(std::move(regex)) {}
  void PreTokenize(std::vector<HfPiece>* pieces) const override {
    std::vector<HfPiece> split;
    split.reserve(pieces->size() * 2);
    for (HfPiece& piece : *pieces) {
      if (add_prefix_space_ && (piece.text.empty() || piece.text[0] != ' ')) {
        piece.text.insert(0, " ");
      }
      if (regex_ != nullptr) {
        EmitRanges(piece,
                   ApplyBehavior(Segment(regex_->FindAll(piece.text), piece.text.size()),
                                 Behavior::kIsolated),
                   &split);
      } else if (!piece.text.empty()) {
        split.push_back(std::move(piece));
      }
    }
    const ByteLevelTables& tables = Tables();
    for (HfPiece& piece : split) {
      std::string mapped;
      mapped.reserve(piece.text.size() * 2);
      for (char c : piece.text) mapped.append(tables.chars[static_cast<unsigned char>(c)]);
      piece.text = std::move(mapped);
    }
    *pieces = std::move(split);
  }

 private:
  bool add_prefix_space_;
  std::unique_ptr<HfRegex> regex_;  // null without use_regex
};

class MetaspacePreTokenizer final : public HfPreTokenizer {
 public:
  enum class Prepend { kAlways, kFirst, kNever };
  MetaspacePreTokenizer(std::string replacement, Prepend prepend, bool split)
      : replacement_(std::move(replacement)), prepend_(prepend), split_(split) {}
  void PreTokenize(std::vector<HfPiece>* pieces) const override {
    std::vector<HfPiece> out;
    out.reserve(pieces->size() * 4);
    for (HfPiece& piece : *pieces) {
      std::string text;
      text.reserve(piece.text.size() + 8);
      for (char c : piece.text) {
        if (c == ' ') {
          text.append(replacement_);
        } else {
          text.push_back(c);
        }
      }
      const bool starts = text.compare(0, replacement_.size(), replacement_) == 0;
      if (!starts &&
          (prepend_ == Prepend::kAlways || (prepend_ == Prepend::kFirst && piece.at_start))) {
        text.insert(0, replacement_);
      }
      piece.text = std::move(text);
      if (!split_) {
        if (!piece.text.empty()) out.push_back(std::move(piece));
        continue;
      }
      // Every replacement character is a match of its own, merged with the text after it.
      std::vector<std::pair<size_t, size_t>> matches;
      for (size_t at = piece.text.find(replacement_); at != std::string::npos;
           at = piece.text.find(replacement_, at + replacement_.size())) {
        matches.emplace_back(at, at + replacement_.size());
      }
      EmitRanges(piece,
                 ApplyBehavior(Segment(matches, piece.text.size()), Behavior::kMergedWithNext),
                 &out);
    }
    *pieces = std::move(out);
  }

 private:
  std::string replacement_;
  Prepend prepend_;
  bool split_;
};

absl::StatusOr<Behavior> ParseBehavior(const nlohmann::json& j) {
  ASSIGN_OR_RETURN(std::string name, HfString(j, "behavior", "Split pre_tokenizer"));
  if (name == "Removed") return Behavior::kRemoved;
  if (name == "Isolated") return Behavior::kIsolated;
  if (name == "MergedWithPrevious") return Behavior::kMergedWithPrevious;
  if (name == "MergedWithNext") return Behavior::kMergedWithNext;
  if (name == "Contiguous") return Behavior::kContiguous;
  return absl::InvalidArgumentError(
      absl::StrCat("Split pre_tokenizer: unknown behavior \"", name, "\""));
}

}  // namespace

const std::string& ByteLevelChar(unsigned char b) { return Tables().chars[b]; }

int ByteLevelByte(uint32_t code_point) {
  return code_point < 512 ? Tables().bytes[code_point] : -1;
}

absl::StatusOr<std::unique_ptr<HfPreTokenizer>> ParseHfPreTokenizer(const nlohmann::json& j) {
  if (j.is_null()) return nullptr;
  ASSIGN_OR_RETURN(std::string type, HfType(j, "pre_tokenizer"));
  if (type == "Sequence") {
    std::vector<std::unique_ptr<HfPreTokenizer>> steps;
    ASSIGN_OR_RETURN(const nlohmann::json* list,
                     HfArray(j, "pretokenizers", "Sequence pre_tokenizer"));
    for (const nlohmann::json& item : *list) {
      ASSIGN_OR_RETURN(std::unique_ptr<HfPreTokenizer> step, ParseHfPreTokenizer(item));
      if (step != nullptr) steps.push_back(std::move(step));
    }
    return std::make_unique<SequencePreTokenizer>(std::move(steps));
  }
  if (type == "Split") {
    ASSIGN_OR_RETURN(std::unique_ptr<HfRegex> regex, HfPattern(j, "Split pre_tokenizer"));
    ASSIGN_OR_RETURN(Behavior behavior, ParseBehavior(j));
    ASSIGN_OR_RETURN(bool invert, HfBool(j, "invert", false, "Split pre_tokenizer"));
    return std::make_unique<SplitPreTokenizer>(std::move(regex), behavior, invert);
  }
  if (type == "Digits") {
    // tokenizers splits on char::is_numeric (general categories Nd, Nl, No, i.e. \p{N}):
    // individual_digits isolates every such character, otherwise each run of them (its
    // "Contiguous" behavior on single characters is one match per run).
    ASSIGN_OR_RETURN(bool individual,
                     HfBool(j, "individual_digits", false, "Digits pre_tokenizer"));
    ASSIGN_OR_RETURN(std::unique_ptr<HfRegex> regex,
                     HfRegex::Compile(individual ? "\\p{N}" : "\\p{N}+"));
    return std::make_unique<SplitPreTokenizer>(std::move(regex), Behavior::kIsolated, false);
  }
  if (type == "ByteLevel") {
    ASSIGN_OR_RETURN(bool prefix, HfBool(j, "add_prefix_space", true, "ByteLevel pre_tokenizer"));
    ASSIGN_OR_RETURN(bool use_regex, HfBool(j, "use_regex", true, "ByteLevel pre_tokenizer"));
    std::unique_ptr<HfRegex> regex;
    if (use_regex) {
      ASSIGN_OR_RETURN(regex, HfRegex::Compile(kGpt2Pattern));
    }
    return std::make_unique<ByteLevelPreTokenizer>(prefix, std::move(regex));
  }
  if (type == "Metaspace") {
    ASSIGN_OR_RETURN(std::string replacement,
                     HfString(j, "replacement", "Metaspace pre_tokenizer"));
    ASSIGN_OR_RETURN(bool split, HfBool(j, "split", true, "Metaspace pre_tokenizer"));
    MetaspacePreTokenizer::Prepend prepend = MetaspacePreTokenizer::Prepend::kAlways;
    if (j.contains("prepend_scheme") && j["prepend_scheme"].is_string()) {
      const std::string scheme = j["prepend_scheme"].get<std::string>();
      if (scheme == "first") {
        prepend = MetaspacePreTokenizer::Prepend::kFirst;
      } else if (scheme == "never") {
        prepend = MetaspacePreTokenizer::Prepend::kNever;
      } else if (scheme != "always") {
        return absl::InvalidArgumentError(
            absl::StrCat("Metaspace pre_tokenizer: unknown prepend_scheme \"", scheme, "\""));
      }
    }
    ASSIGN_OR_RETURN(bool add_prefix, HfBool(j, "add_prefix_space", true, "Metaspace"));
    if (!add_prefix) prepend = MetaspacePreTokenizer::Prepend::kNever;
    return std::make_unique<MetaspacePreTokenizer>(std::move(replacement), prepend, split);
  }
  return absl::UnimplementedError(absl::StrCat(
      "pre_tokenizer type \"", type,
      "\" is not supported (supported: Sequence, Split, Digits, ByteLevel, Metaspace)"));
}

}  // namespace spqr
