#include "engine/runtime/model_chat.h"

#include <algorithm>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace spqr {

absl::StatusOr<ModelChat> LoadModelChat(const std::string& dir, const Tokenizer& tokenizer) {
  ModelChat chat;
  absl::StatusOr<ModelChatTemplate> loaded = LoadModelChatTemplate(dir);
  if (!loaded.ok()) {
    if (loaded.status().code() != absl::StatusCode::kNotFound) return loaded.status();
    chat.missing_reason = std::string(loaded.status().message());
    return chat;
  }
  absl::StatusOr<ChatTemplate> parsed = ChatTemplate::Parse(loaded->source);
  if (!parsed.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(loaded->origin, ": ", parsed.status().message()));
  }
  chat.chat_template = *std::move(parsed);
  chat.info = *std::move(loaded);
  auto eos = chat.info.special_tokens.find("eos_token");
  if (eos != chat.info.special_tokens.end() && !eos->second.empty()) {
    const std::vector<int32_t> ids = tokenizer.Encode(eos->second, /*add_bos=*/false);
    if (ids.size() == 1 && !tokenizer.IsEos(ids[0])) chat.end_of_turn_ids.push_back(ids[0]);
  }
  return chat;
}

std::vector<int32_t> TokenizeChatPrompt(const std::string& prompt, const std::string& bos_text,
                                        const Tokenizer& tokenizer) {
  if (tokenizer.bos_id() >= 0 && !bos_text.empty() && absl::StartsWith(prompt, bos_text)) {
    std::vector<int32_t> ids = {tokenizer.bos_id()};
    const std::vector<int32_t> rest =
        tokenizer.Encode(std::string_view(prompt).substr(bos_text.size()), /*add_bos=*/false);
    ids.insert(ids.end(), rest.begin(), rest.end());
    return ids;
  }
  return tokenizer.Encode(prompt, /*add_bos=*/false);
}

absl::Status CheckChatAvailable(const ModelChat& chat) {
  if (chat.chat_template.has_value()) return absl::OkStatus();
  return absl::FailedPreconditionError(
      absl::StrCat("this model has no chat template, so Chat cannot format the messages (",
                   chat.missing_reason, "); use Generate with a prompt in the model's own format"));
}

absl::StatusOr<std::vector<int32_t>> ChatPromptTokens(const ModelChat& chat,
                                                      const Tokenizer& tokenizer,
                                                      const std::vector<ChatMessage>& messages,
                                                      bool add_generation_prompt) {
  if (absl::Status s = CheckChatAvailable(chat); !s.ok()) return s;
  absl::StatusOr<std::string> prompt =
      chat.chat_template->Render(messages, chat.info.MakeOptions(add_generation_prompt));
  if (!prompt.ok()) return prompt.status();
  auto bos = chat.info.special_tokens.find("bos_token");
  const std::string bos_text = bos == chat.info.special_tokens.end() ? "" : bos->second;
  std::vector<int32_t> ids = TokenizeChatPrompt(*prompt, bos_text, tokenizer);
  if (ids.empty()) {
    return absl::InvalidArgumentError("the chat template rendered the messages to an empty prompt");
  }
  return ids;
}

}  // namespace spqr
