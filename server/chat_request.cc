#include "server/chat_request.h"

#include <cstdint>

#include "absl/strings/str_format.h"

namespace spqr {
namespace {

bool IsRoleChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
         c == '.' || c == '-';
}

}  // namespace

absl::Status ValidateChatRequest(const v1::ChatRequest& request, const RequestLimits& limits) {
  if (request.messages().empty()) {
    return absl::InvalidArgumentError("messages must not be empty (the conversation to answer)");
  }
  if (request.messages_size() > kMaxChatMessages) {
    return absl::InvalidArgumentError(
        absl::StrFormat("messages has %d entries; at most %d are allowed", request.messages_size(),
                        kMaxChatMessages));
  }
  int64_t content_bytes = 0;
  for (int i = 0; i < request.messages_size(); ++i) {
    const v1::ChatMessage& m = request.messages(i);
    if (m.role().empty() || m.role().size() > static_cast<size_t>(kMaxChatRoleBytes)) {
      return absl::InvalidArgumentError(
          absl::StrFormat("messages[%d].role has %d bytes; it must have 1 to %d (e.g. \"user\")", i,
                          m.role().size(), kMaxChatRoleBytes));
    }
    for (char c : m.role()) {
      if (!IsRoleChar(c)) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "messages[%d].role may only contain the characters [A-Za-z0-9_.-] (e.g. \"user\")", i));
      }
    }
    content_bytes += static_cast<int64_t>(m.content().size());
  }
  if (limits.max_prompt_bytes > 0 && content_bytes > limits.max_prompt_bytes) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "messages[].content have %d bytes together; at most %d are allowed: "
        "limits.max_prompt_tokens (%d) x %d bytes, the longest token of this model's tokenizer, "
        "is the most text that fits in the token limit",
        content_bytes, limits.max_prompt_bytes, limits.max_prompt_tokens, limits.max_piece_bytes));
  }
  return ValidateGenerationOptions(ChatGenerateOptions(request), limits);
}

v1::GenerateRequest ChatGenerateOptions(const v1::ChatRequest& request) {
  v1::GenerateRequest out;
  if (request.has_sampling()) *out.mutable_sampling() = request.sampling();
  if (request.has_penalties()) *out.mutable_penalties() = request.penalties();
  if (request.has_stopping()) *out.mutable_stopping() = request.stopping();
  if (request.has_response()) *out.mutable_response() = request.response();
  out.set_request_id(request.request_id());
  out.set_priority(request.priority());
  return out;
}

std::vector<ChatMessage> ToChatMessages(const v1::ChatRequest& request) {
  std::vector<ChatMessage> out;
  out.reserve(request.messages_size());
  for (const v1::ChatMessage& m : request.messages()) {
    out.push_back(ChatMessage{m.role(), m.content(), {}});
  }
  return out;
}

bool AddGenerationPrompt(const v1::ChatRequest& request) {
  return !request.has_add_generation_prompt() || request.add_generation_prompt();
}

}  // namespace spqr
