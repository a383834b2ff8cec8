#include "engine/tokenizer/hf_tokenizer.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <unordered_set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "engine/tokenizer/hf_added_tokens.h"
#include "engine/tokenizer/hf_bpe.h"
#include "engine/tokenizer/hf_decoder.h"
#include "engine/tokenizer/hf_json.h"
#include "engine/tokenizer/hf_normalizer.h"
#include "engine/tokenizer/hf_pre_tokenizer.h"
#include "engine/tokenizer/utf8.h"
#include "engine/util/status_macros.h"

namespace spqr {
namespace {

using nlohmann::json;

// Reads a JSON file; a missing optional file gives null.
absl::StatusOr<json> ReadJson(const std::filesystem::path& path, bool required) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    if (!required) return json();
    return absl::NotFoundError(absl::StrCat("tokenizer file ", path.string(), ": not found"));
  }
  std::stringstream ss;
  ss << in.rdbuf();
  json j = json::parse(ss.str(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) {
    return absl::InvalidArgumentError(absl::StrCat(path.string(), ": not valid JSON"));
  }
  return j;
}

// A token given as "text" or {"content": "text", ...} (tokenizer_config.json styles); "" if none.
std::string TokenString(const json& j) {
  if (j.is_string()) return j.get<std::string>();
  if (j.is_object() && j.contains("content") && j["content"].is_string()) {
    return j["content"].get<std::string>();
  }
  return "";
}

// The special tokens a post-processor adds around a single sequence.
struct Template {
  std::vector<int32_t> prefix, suffix;
};

absl::StatusOr<Template> ParsePostProcessor(const json& j) {
  Template t;
  if (j.is_null()) return t;
  ASSIGN_OR_RETURN(std::string type, HfType(j, "post_processor"));
  if (type == "ByteLevel") return t;
  if (type == "Sequence") {
    ASSIGN_OR_RETURN(const json* list, HfArray(j, "processors", "Sequence post_processor"));
    for (const json& item : *list) {
      ASSIGN_OR_RETURN(Template step, ParsePostProcessor(item));
      t.prefix.insert(t.prefix.end(), step.prefix.begin(), step.prefix.end());
      t.suffix.insert(t.suffix.begin(), step.suffix.begin(), step.suffix.end());
    }
    return t;
  }
  if (type == "RobertaProcessing" || type == "BertProcessing") {
    const auto id_of = [&](const char* key) -> absl::StatusOr<int32_t> {
      if (!j.contains(key) || !j[key].is_array() || j[key].size() != 2 ||
          !j[key][1].is_number_integer()) {
        return absl::InvalidArgumentError(
            absl::StrCat(type, " post_processor: \"", key, "\" is not [token, id]"));
      }
      return j[key][1].get<int32_t>();
    };
    ASSIGN_OR_RETURN(int32_t cls, id_of("cls"));
    ASSIGN_OR_RETURN(int32_t sep, id_of("sep"));
    t.prefix = {cls};
    t.suffix = {sep};
    return t;
  }
  if (type == "TemplateProcessing") {
    ASSIGN_OR_RETURN(const json* single, HfArray(j, "single", "TemplateProcessing post_processor"));
    bool seen_sequence = false;
    for (const json& piece : *single) {
      if (piece.contains("Sequence")) {
        seen_sequence = true;
        continue;
      }
      const std::string name =
          piece.contains("SpecialToken") ? piece["SpecialToken"].value("id", "") : "";
      const json& specials = j.value("special_tokens", json::object());
      if (name.empty() || !specials.contains(name) || !specials[name].contains("ids") ||
          !specials[name]["ids"].is_array()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "TemplateProcessing post_processor: piece ", piece.dump(),
            " is not a Sequence or a SpecialToken listed in special_tokens with its ids"));
      }
      for (const json& id : specials[name]["ids"]) {
        (seen_sequence ? t.suffix : t.prefix).push_back(id.get<int32_t>());
      }
    }
    return t;
  }
  return absl::UnimplementedError(absl::StrCat(
      "post_processor type \"", type,
      "\" is not supported (supported: TemplateProcessing, ByteLevel, RobertaProcessing, "
      "BertProcessing, Sequence)"));
}

}  // namespace

struct HfTokenizer::Impl {
  std::unique_ptr<HfBpe> bpe;
  std::unique_ptr<HfNormalizer> normalizer;
  std::unique_ptr<HfPreTokenizer> pre_tokenizer;
  std::unique_ptr<HfDecoder> decoder;
  std::vector<std::unique_ptr<HfAddedToken>> added;  // owned; the matchers point into them
  std::unordered_map<int32_t, const HfAddedToken*> added_by_id;
  std::unordered_map<int32_t, std::string> added_decode;  // id -> text decode() sees
  std::unordered_map<std::string, int32_t> added_by_content;
  std::unordered_set<std::string> special_contents;  // decode skips tokens with these strings
  std::unique_ptr<HfAddedTokenMatcher> raw_matcher, normalized_matcher;
  Template post;
  int32_t vocab_size = 0;

  int32_t TokenId(const std::string& token) const {
    if (const auto it = added_by_content.find(token); it != added_by_content.end()) {
      return it->second;
    }
    return bpe->TokenToId(token);
  }

  // Normalizes, pre-tokenizes and BPE-encodes one split that holds no added token.
  void EncodeSplit(std::string text, bool at_start, std::vector<int32_t>* ids) const {
    std::vector<HfPiece> pieces;
    pieces.push_back({std::move(text), at_start});
    if (pre_tokenizer != nullptr) pre_tokenizer->PreTokenize(&pieces);
    for (const HfPiece& piece : pieces) bpe->Tokenize(piece.text, ids);
  }

  // Splits of `text` around the matches of `matcher`; calls on_text(text, at_start) for the
  // rest and pushes the ids of the matches.
  template <typename OnText>
  void SplitAdded(const HfAddedTokenMatcher& matcher, std::string_view text, bool at_start,
                  std::vector<int32_t>* ids, OnText&& on_text) const {
    size_t prev = 0;
    for (const HfAddedTokenMatcher::Match& m : matcher.Find(text)) {
      if (m.begin > prev)
        on_text(std::string(text.substr(prev, m.begin - prev)), at_start && prev == 0);
      ids->push_back(m.id);
      prev = m.end;
    }
    if (prev < text.size()) on_text(std::string(text.substr(prev)), at_start && prev == 0);
  }
};

HfTokenizer::HfTokenizer() : impl_(std::make_unique<Impl>()) {}
HfTokenizer::~HfTokenizer() = default;

absl::StatusOr<std::unique_ptr<Tokenizer>> HfTokenizer::Open(const std::string& path,
                                                             int32_t bos_id,
                                                             std::vector<int32_t> eos_ids) {
  const std::filesystem::path file(path);
  ASSIGN_OR_RETURN(json j, ReadJson(file, /*required=*/true));
  ASSIGN_OR_RETURN(json config, ReadJson(file.parent_path() / "tokenizer_config.json", false));
  ASSIGN_OR_RETURN(json special_map,
                   ReadJson(file.parent_path() / "special_tokens_map.json", false));
  return Build(j, config, special_map, path, bos_id, std::move(eos_ids));
}

absl::StatusOr<std::unique_ptr<Tokenizer>> HfTokenizer::Parse(std::string_view tokenizer_json,
                                                              std::string_view tokenizer_config,
                                                              const std::string& name,
                                                              int32_t bos_id,
                                                              std::vector<int32_t> eos_ids) {
  json j = json::parse(tokenizer_json, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return absl::InvalidArgumentError(absl::StrCat(name, ": not valid JSON"));
  json config = json::parse(tokenizer_config, nullptr, /*allow_exceptions=*/false);
  if (config.is_discarded()) config = json();
  return Build(j, config, json(), name, bos_id, std::move(eos_ids));
}

absl::StatusOr<std::unique_ptr<Tokenizer>> HfTokenizer::Build(const json& j, const json& config,
                                                              const json& special_map,
                                                              const std::string& path,
                                                              int32_t bos_id,
                                                              std::vector<int32_t> eos_ids) {
  // nlohmann::json throws on a field of an unexpected type (json::value, get): such a file is
  // refused like any other malformed one.
  try {
    return BuildUnchecked(j, config, special_map, path, bos_id, std::move(eos_ids));
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": malformed: ", e.what()));
  }
}

absl::StatusOr<std::unique_ptr<Tokenizer>> HfTokenizer::BuildUnchecked(
    const json& j, json config, json special_map, const std::string& path, int32_t bos_id,
    std::vector<int32_t> eos_ids) {
  const auto where = [&](const absl::Status& s) {
    return absl::Status(s.code(), absl::StrCat(path, ": ", s.message()));
  };
  if (!j.is_object() || !j.contains("model") || !j["model"].is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": no \"model\" object"));
  }
  std::unique_ptr<HfTokenizer> tokenizer(new HfTokenizer());
  Impl& impl = *tokenizer->impl_;

  const json& model = j["model"];
  const std::string model_type = model.value("type", model.contains("merges") ? "BPE" : "");
  if (model_type != "BPE") {
    return absl::UnimplementedError(absl::StrCat(
        path, ": model type \"", model_type,
        "\" is not supported (only BPE; WordPiece, WordLevel and Unigram models are not)"));
  }
  auto bpe = HfBpe::Parse(model);
  if (!bpe.ok()) return where(bpe.status());
  impl.bpe = *std::move(bpe);
  auto normalizer = ParseHfNormalizer(j.value("normalizer", json()));
  if (!normalizer.ok()) return where(normalizer.status());
  impl.normalizer = *std::move(normalizer);
  auto pre_tokenizer = ParseHfPreTokenizer(j.value("pre_tokenizer", json()));
  if (!pre_tokenizer.ok()) return where(pre_tokenizer.status());
  impl.pre_tokenizer = *std::move(pre_tokenizer);
  auto decoder = ParseHfDecoder(j.value("decoder", json()));
  if (!decoder.ok()) return where(decoder.status());
  impl.decoder = *std::move(decoder);
  auto post = ParsePostProcessor(j.value("post_processor", json()));
  if (!post.ok()) return where(post.status());
  impl.post = *std::move(post);

  // Added tokens.
  ASSIGN_OR_RETURN(impl.raw_matcher, HfAddedTokenMatcher::Create());
  ASSIGN_OR_RETURN(impl.normalized_matcher, HfAddedTokenMatcher::Create());
  impl.vocab_size = impl.bpe->id_limit();
  const json& added = j.value("added_tokens", json::array());
  if (!added.is_array())
    return absl::InvalidArgumentError(absl::StrCat(path, ": \"added_tokens\" is not an array"));
  for (const json& a : added) {
    auto token = std::make_unique<HfAddedToken>();
    if (!a.is_object() || !a.contains("id") || !a["id"].is_number_integer() ||
        a["id"].get<int64_t>() < 0 || !a.contains("content") || !a["content"].is_string()) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": added token ", a.dump().substr(0, 200), " has no id or content"));
    }
    token->id = a["id"].get<int32_t>();
    token->content = a["content"].get<std::string>();
    token->single_word = a.value("single_word", false);
    token->lstrip = a.value("lstrip", false);
    token->rstrip = a.value("rstrip", false);
    token->normalized = a.value("normalized", true);
    token->special = a.value("special", false);
    if (token->content.empty()) continue;
    std::string decoded = token->content;
    if (token->normalized) {
      if (impl.normalizer != nullptr) impl.normalizer->Normalize(&decoded);
      impl.normalized_matcher->Add(decoded, token.get());
    } else {
      impl.raw_matcher->Add(token->content, token.get());
    }
    impl.vocab_size = std::max(impl.vocab_size, token->id + 1);
    impl.added_by_id[token->id] = token.get();
    impl.added_decode[token->id] = std::move(decoded);
    impl.added_by_content[token->content] = token->id;
    if (token->special) impl.special_contents.insert(token->content);
    impl.added.push_back(std::move(token));
  }

  // tokenizer_config.json / special_tokens_map.json: bos/eos strings and the Llama/Gemma rule.
  if (!config.is_object()) config = json::object();
  if (!special_map.is_object()) special_map = json::object();
  const auto special_token = [&](const char* key) {
    std::string s = config.contains(key) ? TokenString(config[key]) : "";
    if (s.empty() && special_map.contains(key)) s = TokenString(special_map[key]);
    return s.empty() ? -1 : impl.TokenId(s);
  };
  const int32_t config_bos = special_token("bos_token");
  const int32_t config_eos = special_token("eos_token");
  const std::string tokenizer_class = config.value("tokenizer_class", "");
  if (tokenizer_class == "LlamaTokenizer" || tokenizer_class == "LlamaTokenizerFast" ||
      tokenizer_class == "GemmaTokenizer" || tokenizer_class == "GemmaTokenizerFast") {
    impl.post = Template();
    const bool add_bos = config.contains("add_bos_token") && config["add_bos_token"].is_boolean()
                             ? config["add_bos_token"].get<bool>()
                             : true;
    const bool add_eos = config.contains("add_eos_token") && config["add_eos_token"].is_boolean()
                             ? config["add_eos_token"].get<bool>()
                             : false;
    if (add_bos && config_bos >= 0) impl.post.prefix.push_back(config_bos);
    if (add_eos && config_eos >= 0) impl.post.suffix.push_back(config_eos);
  }
  if (bos_id >= 0 && impl.post.prefix.size() == 1) impl.post.prefix[0] = bos_id;

  const int32_t vocab = impl.vocab_size;
  for (int32_t id : impl.post.prefix) {
    if (id < 0 || id >= vocab) {
      return absl::InvalidArgumentError(absl::StrCat(
          "bos id ", id, " is outside the vocabulary of ", path, " (", vocab, " tokens)"));
    }
  }
  tokenizer->bos_id_ = impl.post.prefix.empty() ? -1 : impl.post.prefix.front();
  RETURN_IF_ERROR(tokenizer->AddEosIds(eos_ids, path));
  if (tokenizer->eos_ids_.empty() && config_eos >= 0) tokenizer->eos_ids_.push_back(config_eos);

  // The longest text one token stands for (see Tokenizer::max_piece_bytes).
  int32_t longest = 1;
  for (int32_t id = 0; id < impl.bpe->id_limit(); ++id) {
    const std::string* token = impl.bpe->IdToToken(id);
    if (token == nullptr) continue;
    std::vector<std::string> one = {*token};
    if (impl.decoder != nullptr) impl.decoder->DecodeChain(&one);
    size_t bytes = 0;
    for (const std::string& s : one) bytes += s.size();
    // A decoder that drops the first token's leading space marker (Metaspace, Strip) hides one
    // byte of input; counting one more is a safe bound.
    longest = std::max<int32_t>(longest, static_cast<int32_t>(bytes) + 1);
  }
  for (const auto& token : impl.added) {
    longest = std::max<int32_t>(longest, static_cast<int32_t>(token->content.size()));
  }
  tokenizer->max_piece_bytes_ = longest;
  return tokenizer;
}

std::vector<int32_t> HfTokenizer::Encode(std::string_view text, bool add_bos) const {
  const Impl& impl = *impl_;
  std::string repaired;
  if (!utf8::IsValid(text)) {
    repaired = utf8::Repair(text);
    text = repaired;
  }
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  if (add_bos) ids.insert(ids.end(), impl.post.prefix.begin(), impl.post.prefix.end());
  const auto encode_normalized = [&](std::string split, bool at_start) {
    if (impl.normalizer != nullptr) impl.normalizer->Normalize(&split);
    impl.SplitAdded(*impl.normalized_matcher, split, at_start, &ids,
                    [&](std::string rest, bool rest_at_start) {
                      impl.EncodeSplit(std::move(rest), rest_at_start, &ids);
                    });
  };
  impl.SplitAdded(*impl.raw_matcher, text, /*at_start=*/true, &ids, encode_normalized);
  if (add_bos) ids.insert(ids.end(), impl.post.suffix.begin(), impl.post.suffix.end());
  return ids;
}

std::string HfTokenizer::Decode(const std::vector<int32_t>& ids) const {
  const Impl& impl = *impl_;
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int32_t id : ids) {
    // As tokenizers does: an id's string (an added token's normalized form, else the vocab
    // entry) is skipped when it is the content of a special added token.
    const std::string* token = nullptr;
    if (const auto it = impl.added_decode.find(id); it != impl.added_decode.end()) {
      token = &it->second;
    } else {
      token = impl.bpe->IdToToken(id);
    }
    if (token != nullptr && !impl.special_contents.contains(*token)) tokens.push_back(*token);
  }
  if (impl.decoder == nullptr) {
    std::string out;
    for (size_t i = 0; i < tokens.size(); ++i) {
      if (i > 0) out.push_back(' ');
      out.append(tokens[i]);
    }
    return out;
  }
  impl.decoder->DecodeChain(&tokens);
  std::string out;
  for (const std::string& s : tokens) out.append(s);
  return out;
}

std::string HfTokenizer::IdToPiece(int32_t id) const {
  if (const auto it = impl_->added_by_id.find(id); it != impl_->added_by_id.end()) {
    return it->second->content;
  }
  const std::string* token = impl_->bpe->IdToToken(id);
  return token == nullptr ? "" : *token;
}

int32_t HfTokenizer::vocab_size() const { return impl_->vocab_size; }

}  // namespace spqr
