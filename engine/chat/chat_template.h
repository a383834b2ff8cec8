// Chat templates: turning role/content messages into the prompt text a model was trained on,
// the way Hugging Face transformers' apply_chat_template does (tokenize=False), with the model's
// own Jinja template from tokenizer_config.json.
//
// The template engine (engine/chat/jinja_*) implements the Jinja2 subset real chat templates use
// and renders byte-identically to Jinja2 with transformers' environment (trim_blocks,
// lstrip_blocks, loopcontrols, raise_exception, strftime_now, tojson without HTML escaping).
// A construct outside the subset is refused by Parse with its name and line/column, never
// rendered approximately. docs/chat-templates.md lists the subset.
//
// Fallback: a model directory without any chat template has none; LoadModelChatTemplate returns
// NotFound and callers refuse chat requests for that model (Generate with a formatted prompt
// still works). There is deliberately no built-in default template: guessing a format would
// produce prompts the model was not trained on.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace spqr {

namespace jinja {
struct Template;
}

struct ChatMessage {
  std::string role;
  std::string content;
  // Further message fields the template may read (tool_calls, name, tool_call_id, ...), as a JSON
  // object merged after role/content. Null or empty: none.
  nlohmann::ordered_json extra;
};

struct ChatRenderOptions {
  // Append the header that opens the assistant's reply.
  bool add_generation_prompt = false;
  // The template variables bos_token / eos_token; unset leaves them undefined (render as "").
  std::optional<std::string> bos_token;
  std::optional<std::string> eos_token;
  // Further variables (other special tokens, tools, documents, date_string, ...): a JSON object.
  // They override the defaults (tools = None, documents = None) and bos/eos above.
  nlohmann::ordered_json extra_vars = nlohmann::ordered_json::object();
  // strftime_now()'s clock (seconds since the epoch, rendered in local time); unset: the system
  // clock. Tests set it for reproducible output.
  std::function<int64_t()> now;
};

// Immutable once parsed: Render may run concurrently on one ChatTemplate from any number of
// threads (each render has its own evaluation state).
class ChatTemplate {
 public:
  // Parses a template. InvalidArgument on a syntax error or an unsupported construct, naming it
  // with its line and column.
  static absl::StatusOr<ChatTemplate> Parse(std::string_view source);

  // Renders `messages` (transformers' apply_chat_template(..., tokenize=False)), after the same
  // message normalization transformers applies: keys with null values are dropped, and reasoning
  // given as reasoning_content, thinking or reasoning is also passed under the other two names.
  // InvalidArgument for an empty conversation (transformers refuses it too), when the template
  // raises (raise_exception: its message, e.g. a role-alternation rule) or fails at run time (an
  // undefined attribute, a type error), with the template position.
  absl::StatusOr<std::string> Render(const std::vector<ChatMessage>& messages,
                                     const ChatRenderOptions& options) const;
  // The same with messages given as a JSON array of objects (any fields, e.g. list contents).
  absl::StatusOr<std::string> RenderJson(const nlohmann::ordered_json& messages,
                                         const ChatRenderOptions& options) const;

  const std::string& source() const { return *source_; }

 private:
  ChatTemplate() = default;
  std::shared_ptr<const jinja::Template> tmpl_;
  std::shared_ptr<const std::string> source_;
};

// A model directory's chat template and the special tokens the template sees.
struct ModelChatTemplate {
  std::string source;  // the template text
  std::string origin;  // where it came from, for messages ("<dir>/tokenizer_config.json", ...)
  // bos_token, eos_token, unk_token, pad_token... from tokenizer_config.json (string or
  // {"content": ...} form), as transformers passes its special_tokens_map to the template.
  std::map<std::string, std::string> special_tokens;
  // ChatRenderOptions with bos/eos/special tokens filled in.
  ChatRenderOptions MakeOptions(bool add_generation_prompt) const;
};

// Reads the chat template of a Hugging Face model directory: `chat_template.jinja` when present
// (newer transformers save it there, and it takes precedence), else tokenizer_config.json's
// "chat_template", either a string or a list of {"name", "template"} (the one named `name`,
// default "default"). NotFound when the directory has none; InvalidArgument for malformed files.
absl::StatusOr<ModelChatTemplate> LoadModelChatTemplate(const std::string& model_dir,
                                                        const std::string& name = "default");

}  // namespace spqr
