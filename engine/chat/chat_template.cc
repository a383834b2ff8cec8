#include "engine/chat/chat_template.h"

#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/chat/jinja_evaluator.h"
#include "engine/chat/jinja_parser.h"

namespace spqr {
namespace {

std::string Where(const jinja::Error& e) {
  if (e.line == 0) return "";
  return absl::StrCat("line ", e.line, ", column ", e.column, ": ");
}

// What transformers' apply_chat_template does to each message before rendering (5.x:
// _normalize_chat_messages and _alias_reasoning_fields): keys whose value is null are dropped
// (templates handle a missing key, not a None one), and a message carrying reasoning under any of
// reasoning_content / thinking / reasoning gets it under "thinking" (placed first) and
// "reasoning_content" too.
absl::StatusOr<nlohmann::ordered_json> NormalizeMessages(const nlohmann::ordered_json& messages) {
  if (!messages.is_array()) return absl::InvalidArgumentError("messages must be a JSON array");
  if (messages.empty()) {
    return absl::InvalidArgumentError(
        "cannot apply the chat template to an empty conversation: provide at least one message");
  }
  nlohmann::ordered_json out = nlohmann::ordered_json::array();
  for (const auto& m : messages) {
    if (!m.is_object()) {
      return absl::InvalidArgumentError(
          absl::StrCat("chat messages must be JSON objects, got ", m.type_name()));
    }
    nlohmann::ordered_json kept = nlohmann::ordered_json::object();
    for (const auto& [k, v] : m.items()) {
      if (!v.is_null()) kept[k] = v;
    }
    const nlohmann::ordered_json* reasoning = nullptr;
    for (const char* key : {"reasoning_content", "thinking", "reasoning"}) {
      if (kept.contains(key)) {
        reasoning = &kept[key];
        break;
      }
    }
    if (reasoning != nullptr) {
      nlohmann::ordered_json aliased = {{"thinking", *reasoning}};
      for (const auto& [k, v] : kept.items()) aliased[k] = v;
      aliased["reasoning_content"] = *reasoning;
      kept = std::move(aliased);
    }
    out.push_back(std::move(kept));
  }
  return out;
}

absl::StatusOr<std::string> ReadFile(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path.string()));
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat("cannot read ", path.string()));
  return ss.str();
}

}  // namespace

absl::StatusOr<ChatTemplate> ChatTemplate::Parse(std::string_view source) {
  ChatTemplate t;
  try {
    t.tmpl_ = std::make_shared<const jinja::Template>(jinja::ParseTemplate(source));
  } catch (const jinja::Error& e) {
    return absl::InvalidArgumentError(absl::StrCat("chat template: ", Where(e), e.what()));
  }
  t.source_ = std::make_shared<const std::string>(source);
  return t;
}

absl::StatusOr<std::string> ChatTemplate::Render(const std::vector<ChatMessage>& messages,
                                                 const ChatRenderOptions& options) const {
  nlohmann::ordered_json list = nlohmann::ordered_json::array();
  for (const ChatMessage& m : messages) {
    nlohmann::ordered_json obj = {{"role", m.role}, {"content", m.content}};
    if (m.extra.is_object()) {
      for (const auto& [k, v] : m.extra.items()) obj[k] = v;
    } else if (!m.extra.is_null()) {
      return absl::InvalidArgumentError("ChatMessage.extra must be a JSON object");
    }
    list.push_back(std::move(obj));
  }
  return RenderJson(list, options);
}

absl::StatusOr<std::string> ChatTemplate::RenderJson(const nlohmann::ordered_json& messages,
                                                     const ChatRenderOptions& options) const {
  if (!options.extra_vars.is_object() && !options.extra_vars.is_null()) {
    return absl::InvalidArgumentError("extra_vars must be a JSON object");
  }
  auto normalized = NormalizeMessages(messages);
  if (!normalized.ok()) return normalized.status();
  try {
    // The variables transformers passes: messages, tools, documents, add_generation_prompt and
    // the tokenizer's special tokens; then the caller's extra keyword arguments.
    jinja::ValueDict vars;
    vars.Set("messages", jinja::Value::FromJson(*normalized));
    vars.Set("tools", jinja::Value::None());
    vars.Set("documents", jinja::Value::None());
    vars.Set("add_generation_prompt", jinja::Value(options.add_generation_prompt));
    if (options.bos_token) vars.Set("bos_token", jinja::Value(*options.bos_token));
    if (options.eos_token) vars.Set("eos_token", jinja::Value(*options.eos_token));
    if (options.extra_vars.is_object()) {
      for (const auto& [k, v] : options.extra_vars.items()) vars.Set(k, jinja::Value::FromJson(v));
    }
    jinja::GlobalsConfig globals;
    globals.now = options.now;
    return jinja::RenderTemplate(*tmpl_, vars, globals);
  } catch (const jinja::Error& e) {
    if (e.raised_by_template) {
      return absl::InvalidArgumentError(
          absl::StrCat("chat template rejected the messages: ", e.what()));
    }
    return absl::InvalidArgumentError(
        absl::StrCat("chat template rendering failed: ", Where(e), e.what()));
  }
}

ChatRenderOptions ModelChatTemplate::MakeOptions(bool add_generation_prompt) const {
  ChatRenderOptions o;
  o.add_generation_prompt = add_generation_prompt;
  for (const auto& [k, v] : special_tokens) {
    if (k == "bos_token") {
      o.bos_token = v;
    } else if (k == "eos_token") {
      o.eos_token = v;
    } else {
      o.extra_vars[k] = v;
    }
  }
  return o;
}

absl::StatusOr<ModelChatTemplate> LoadModelChatTemplate(const std::string& model_dir,
                                                        const std::string& name) {
  namespace fs = std::filesystem;
  ModelChatTemplate out;
  const fs::path dir(model_dir);
  const fs::path config_path = dir / "tokenizer_config.json";
  nlohmann::ordered_json config = nlohmann::ordered_json::object();
  std::error_code ec;
  if (fs::exists(config_path, ec)) {
    auto text = ReadFile(config_path);
    if (!text.ok()) return text.status();
    config = nlohmann::ordered_json::parse(*text, nullptr, /*allow_exceptions=*/false);
    if (config.is_discarded() || !config.is_object()) {
      return absl::InvalidArgumentError(
          absl::StrCat(config_path.string(), " is not a JSON object"));
    }
    for (const char* key : {"bos_token", "eos_token", "unk_token", "pad_token", "sep_token",
                            "cls_token", "mask_token"}) {
      if (!config.contains(key)) continue;
      const auto& v = config[key];
      if (v.is_string()) {
        out.special_tokens[key] = v.get<std::string>();
      } else if (v.is_object() && v.contains("content") && v["content"].is_string()) {
        out.special_tokens[key] = v["content"].get<std::string>();
      } else if (!v.is_null()) {
        return absl::InvalidArgumentError(absl::StrCat(config_path.string(), ": ", key,
                                                       " must be a string or {\"content\": ...}"));
      }
    }
  }
  const fs::path jinja_path = dir / "chat_template.jinja";
  if (fs::exists(jinja_path, ec)) {
    auto text = ReadFile(jinja_path);
    if (!text.ok()) return text.status();
    out.source = *std::move(text);
    out.origin = jinja_path.string();
    return out;
  }
  if (!config.contains("chat_template") || config["chat_template"].is_null()) {
    return absl::NotFoundError(
        absl::StrCat("model directory ", model_dir,
                     " has no chat template (no chat_template.jinja, no \"chat_template\" in "
                     "tokenizer_config.json); chat requests need one, plain prompts do not"));
  }
  const auto& ct = config["chat_template"];
  out.origin = config_path.string();
  if (ct.is_string()) {
    out.source = ct.get<std::string>();
    return out;
  }
  if (ct.is_array()) {
    std::string names;
    for (const auto& entry : ct) {
      if (!entry.is_object() || !entry.contains("name") || !entry["name"].is_string() ||
          !entry.contains("template") || !entry["template"].is_string()) {
        return absl::InvalidArgumentError(absl::StrCat(
            config_path.string(), ": chat_template list entries must be {\"name\", \"template\"}"));
      }
      const std::string entry_name = entry["name"].get<std::string>();
      if (entry_name == name) {
        out.source = entry["template"].get<std::string>();
        out.origin = absl::StrCat(config_path.string(), " (template '", name, "')");
        return out;
      }
      names += (names.empty() ? "" : ", ") + entry_name;
    }
    return absl::NotFoundError(absl::StrCat(config_path.string(), " has no chat template named '",
                                            name, "' (it has: ", names, ")"));
  }
  return absl::InvalidArgumentError(absl::StrCat(
      config_path.string(), ": chat_template must be a string or a list of named templates"));
}

}  // namespace spqr
