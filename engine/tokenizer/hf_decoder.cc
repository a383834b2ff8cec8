#include "engine/tokenizer/hf_decoder.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "engine/tokenizer/hf_json.h"
#include "engine/tokenizer/hf_pre_tokenizer.h"
#include "engine/tokenizer/hf_regex.h"
#include "engine/tokenizer/utf8.h"
#include "engine/util/status_macros.h"

namespace spqr {
namespace {

class SequenceDecoder final : public HfDecoder {
 public:
  explicit SequenceDecoder(std::vector<std::unique_ptr<HfDecoder>> steps)
      : steps_(std::move(steps)) {}
  void DecodeChain(std::vector<std::string>* tokens) const override {
    for (const auto& step : steps_) step->DecodeChain(tokens);
  }

 private:
  std::vector<std::unique_ptr<HfDecoder>> steps_;
};

// Byte-level characters back to bytes; a token with any other character keeps its UTF-8 bytes.
// The bytes of all tokens are joined and repaired (U+FFFD for invalid sequences) into one string.
class ByteLevelDecoder final : public HfDecoder {
 public:
  void DecodeChain(std::vector<std::string>* tokens) const override {
    std::string bytes;
    for (const std::string& token : *tokens) {
      const size_t mark = bytes.size();
      bool mapped = true;
      for (size_t pos = 0, len = 0; pos < token.size(); pos += len) {
        const int b = ByteLevelByte(utf8::DecodeAt(token, pos, &len));
        if (b < 0) {
          mapped = false;
          break;
        }
        bytes.push_back(static_cast<char>(b));
      }
      if (!mapped) {
        bytes.resize(mark);
        bytes.append(token);
      }
    }
    tokens->assign(1, utf8::IsValid(bytes) ? std::move(bytes) : utf8::Repair(bytes));
  }
};

// The replacement character becomes a space, except in the first token, where it is dropped
// (the prefix space the pre-tokenizer added) unless prepend_scheme is "never".
class MetaspaceDecoder final : public HfDecoder {
 public:
  MetaspaceDecoder(std::string replacement, bool drop_first)
      : replacement_(std::move(replacement)), drop_first_(drop_first) {}
  void DecodeChain(std::vector<std::string>* tokens) const override {
    for (size_t i = 0; i < tokens->size(); ++i) {
      std::string& token = (*tokens)[i];
      std::string out;
      for (size_t pos = 0; pos < token.size();) {
        if (token.compare(pos, replacement_.size(), replacement_) == 0) {
          if (i != 0 || !drop_first_) out.push_back(' ');
          pos += replacement_.size();
        } else {
          out.push_back(token[pos++]);
        }
      }
      token = std::move(out);
    }
  }

 private:
  std::string replacement_;
  bool drop_first_;
};

class ReplaceDecoder final : public HfDecoder {
 public:
  ReplaceDecoder(std::unique_ptr<HfRegex> regex, std::string content)
      : regex_(std::move(regex)), content_(std::move(content)) {}
  void DecodeChain(std::vector<std::string>* tokens) const override {
    for (std::string& token : *tokens) token = ReplaceAll(*regex_, token, content_);
  }

 private:
  std::unique_ptr<HfRegex> regex_;
  std::string content_;
};

// "<0xXX>" tokens become bytes; a run of them that is not valid UTF-8 becomes one U+FFFD per byte.
class ByteFallbackDecoder final : public HfDecoder {
 public:
  void DecodeChain(std::vector<std::string>* tokens) const override {
    std::vector<std::string> out;
    out.reserve(tokens->size());
    std::string run;
    const auto flush = [&] {
      if (run.empty()) return;
      if (utf8::IsValid(run)) {
        out.push_back(run);
      } else {
        for (size_t k = 0; k < run.size(); ++k) out.emplace_back(utf8::kReplacement);
      }
      run.clear();
    };
    for (std::string& token : *tokens) {
      int byte = -1;
      if (token.size() == 6 && token.compare(0, 3, "<0x") == 0 && token[5] == '>') {
        byte = HexByte(token[3], token[4]);
      }
      if (byte >= 0) {
        run.push_back(static_cast<char>(byte));
      } else {
        flush();
        out.push_back(std::move(token));
      }
    }
    flush();
    *tokens = std::move(out);
  }

 private:
  static int HexDigit(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  }
  static int HexByte(char hi, char lo) {
    const int h = HexDigit(hi), l = HexDigit(lo);
    return h < 0 || l < 0 ? -1 : h * 16 + l;
  }
};

class FuseDecoder final : public HfDecoder {
 public:
  void DecodeChain(std::vector<std::string>* tokens) const override {
    std::string all;
    for (const std::string& token : *tokens) all.append(token);
    tokens->assign(1, std::move(all));
  }
};

// Removes up to `start` leading and `stop` trailing `content` characters from every token.
class StripDecoder final : public HfDecoder {
 public:
  StripDecoder(std::string content, size_t start, size_t stop)
      : content_(std::move(content)), start_(start), stop_(stop) {}
  void DecodeChain(std::vector<std::string>* tokens) const override {
    const size_t n = content_.size();
    for (std::string& token : *tokens) {
      size_t begin = 0, end = token.size();
      for (size_t k = 0; k < start_ && begin + n <= end && token.compare(begin, n, content_) == 0;
           ++k) {
        begin += n;
      }
      for (size_t k = 0; k < stop_ && end >= begin + n && token.compare(end - n, n, content_) == 0;
           ++k) {
        end -= n;
      }
      token = token.substr(begin, end - begin);
    }
  }

 private:
  std::string content_;
  size_t start_, stop_;
};

absl::StatusOr<size_t> Count(const nlohmann::json& j, const char* key) {
  if (!j.contains(key) || !j[key].is_number_unsigned()) {
    return absl::InvalidArgumentError(
        absl::StrCat("Strip decoder: \"", key, "\" is not a non-negative integer"));
  }
  return j[key].get<size_t>();
}

}  // namespace

absl::StatusOr<std::unique_ptr<HfDecoder>> ParseHfDecoder(const nlohmann::json& j) {
  if (j.is_null()) return nullptr;
  ASSIGN_OR_RETURN(std::string type, HfType(j, "decoder"));
  if (type == "Sequence") {
    std::vector<std::unique_ptr<HfDecoder>> steps;
    ASSIGN_OR_RETURN(const nlohmann::json* list, HfArray(j, "decoders", "Sequence decoder"));
    for (const nlohmann::json& item : *list) {
      ASSIGN_OR_RETURN(std::unique_ptr<HfDecoder> step, ParseHfDecoder(item));
      if (step != nullptr) steps.push_back(std::move(step));
    }
    return std::make_unique<SequenceDecoder>(std::move(steps));
  }
  if (type == "ByteLevel") return std::make_unique<ByteLevelDecoder>();
  if (type == "Metaspace") {
    ASSIGN_OR_RETURN(std::string replacement, HfString(j, "replacement", "Metaspace decoder"));
    bool drop_first = true;
    if (j.contains("prepend_scheme") && j["prepend_scheme"].is_string()) {
      drop_first = j["prepend_scheme"].get<std::string>() != "never";
    }
    ASSIGN_OR_RETURN(bool add_prefix, HfBool(j, "add_prefix_space", true, "Metaspace decoder"));
    if (!add_prefix) drop_first = false;
    return std::make_unique<MetaspaceDecoder>(std::move(replacement), drop_first);
  }
  if (type == "Replace") {
    ASSIGN_OR_RETURN(std::unique_ptr<HfRegex> regex, HfPattern(j, "Replace decoder"));
    ASSIGN_OR_RETURN(std::string content, HfString(j, "content", "Replace decoder"));
    return std::make_unique<ReplaceDecoder>(std::move(regex), std::move(content));
  }
  if (type == "ByteFallback") return std::make_unique<ByteFallbackDecoder>();
  if (type == "Fuse") return std::make_unique<FuseDecoder>();
  if (type == "Strip") {
    ASSIGN_OR_RETURN(std::string content, HfString(j, "content", "Strip decoder"));
    ASSIGN_OR_RETURN(size_t start, Count(j, "start"));
    ASSIGN_OR_RETURN(size_t stop, Count(j, "stop"));
    return std::make_unique<StripDecoder>(std::move(content), start, stop);
  }
  return absl::UnimplementedError(absl::StrCat(
      "decoder type \"", type,
      "\" is not supported (supported: Sequence, ByteLevel, Metaspace, Replace, ByteFallback, "
      "Fuse, Strip)"));
}

}  // namespace spqr
