// Chat requests (spqr.v1.ChatRequest): the checks that need no tokenizer, and the conversion into
// the GenerateRequest a Chat call runs (its prompt is filled in later, from the rendered template).
#pragma once

#include <vector>

#include "absl/status/status.h"
#include "engine/chat/chat_template.h"
#include "server/request_validation.h"
#include "spqr/v1/spqr.pb.h"

namespace spqr {

// Most messages per ChatRequest.
inline constexpr int kMaxChatMessages = 1024;
// Longest role, in bytes.
inline constexpr int kMaxChatRoleBytes = 64;

// INVALID_ARGUMENT naming the field: no messages or more than kMaxChatMessages, a role that is not
// 1 to kMaxChatRoleBytes bytes of [A-Za-z0-9_.-], contents longer in total than
// limits.max_prompt_bytes (checked before rendering so a request's cost is bounded up front), and
// the generation options' checks (ValidateGenerationOptions). Contents are UTF-8 already (the
// request parser refuses anything else).
absl::Status ValidateChatRequest(const v1::ChatRequest& request, const RequestLimits& limits);

// The GenerateRequest with the chat request's generation options and no prompt yet.
v1::GenerateRequest ChatGenerateOptions(const v1::ChatRequest& request);

// The messages for the template.
std::vector<ChatMessage> ToChatMessages(const v1::ChatRequest& request);

// add_generation_prompt, absent meaning true.
bool AddGenerationPrompt(const v1::ChatRequest& request);

}  // namespace spqr
