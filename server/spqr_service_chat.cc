// SpqrServiceImpl::Chat (server-streamed) and ChatUnary: a conversation rendered with the model's
// chat template (engine/runtime/model_chat.h) and generated like Generate / GenerateUnary, through
// the same reactors (generate_call.h); only where the prompt comes from differs (ChatPrompt).
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "server/chat_request.h"
#include "server/generate_call.h"
#include "server/request_validation.h"
#include "server/spqr_service.h"

namespace spqr {
namespace {

class ChatPrompt final : public CallPrompt {
 public:
  grpc::Status Admit(SpqrServiceImpl* service, grpc::CallbackServerContext* context,
                     const char* method, const grpc::ByteBuffer& payload,
                     v1::GenerateRequest* request, std::string* engine_id,
                     std::string* client_id) override {
    if (grpc::Status s = service->ParseAndAdmit(context, method, payload, &chat_); !s.ok()) {
      return s;
    }
    *engine_id = service->NextEngineId();
    *client_id = chat_.request_id().empty() ? *engine_id : chat_.request_id();
    if (grpc::Status s = ToGrpcStatus(ValidateChatRequest(chat_, service->limits())); !s.ok()) {
      return s;
    }
    // Refused on the gRPC thread, before any rendering, so the reason is not a queued failure.
    if (grpc::Status s = ToGrpcStatus(CheckChatAvailable(service->engine()->model().chat));
        !s.ok()) {
      return s;
    }
    *request = ChatGenerateOptions(chat_);
    return grpc::Status::OK;
  }

  absl::StatusOr<GenerateRequest> MakeRequest(SpqrServiceImpl* service,
                                              const v1::GenerateRequest& options,
                                              const std::string& engine_id) override {
    const LoadedModel& model = service->engine()->model();
    const RequestLimits& limits = service->limits();
    absl::StatusOr<std::vector<int32_t>> tokens = ChatPromptTokens(
        model.chat, *model.tokenizer, ToChatMessages(chat_), AddGenerationPrompt(chat_));
    if (!tokens.ok()) return tokens.status();
    // The length checks of MakeEngineRequest, with messages that speak of the conversation.
    const int64_t prompt_len = static_cast<int64_t>(tokens->size());
    if (prompt_len > limits.max_prompt_tokens) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "the chat prompt (the messages rendered with the chat template) has %d tokens; at most "
          "%d are allowed (limits.max_prompt_tokens)",
          prompt_len, limits.max_prompt_tokens));
    }
    if (!options.stopping().has_max_new_tokens() && prompt_len >= limits.max_context_tokens) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "the chat prompt has %d tokens and fills the context (%d tokens): nothing can be "
          "generated",
          prompt_len, limits.max_context_tokens));
    }
    v1::GenerateRequest request = options;
    request.mutable_token_ids()->mutable_ids()->Assign(tokens->begin(), tokens->end());
    absl::StatusOr<GenerateRequest> out =
        MakeEngineRequest(request, model.tokenizer.get(), limits, engine_id);
    if (!out.ok()) return out.status();
    // The template's end-of-turn token ends the reply like an eos token (not with ignore_eos).
    if (!out->stopping.ignore_eos) {
      for (int32_t id : model.chat.end_of_turn_ids) out->stopping.stop_token_ids.push_back(id);
    }
    return out;
  }

 private:
  v1::ChatRequest chat_;  // written on the gRPC thread, read on the work pool after it
};

}  // namespace

grpc::ServerWriteReactor<grpc::ByteBuffer>* SpqrServiceImpl::Chat(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request) {
  return StartStreamedGeneration(this, context, *request, "Chat", std::make_unique<ChatPrompt>());
}

grpc::ServerUnaryReactor* SpqrServiceImpl::ChatUnary(grpc::CallbackServerContext* context,
                                                     const grpc::ByteBuffer* request,
                                                     grpc::ByteBuffer* response) {
  return StartUnaryGeneration(this, context, *request, response, "ChatUnary",
                              std::make_unique<ChatPrompt>());
}

}  // namespace spqr
