// The start of a call that runs one generation (Generate, GenerateUnary, Chat, ChatUnary):
// admission on the gRPC thread, then on the service's work pool tokenizing, registration
// for Abort, the request id in the initial metadata and Engine::Submit, with a client cancellation
// forwarded to the engine whichever of OnCancel and Submit comes second. The derived reactor
// decides how the engine's chunks become responses (hooks below); the call's CallPrompt decides
// where the prompt comes from (a GenerateRequest's text or ids, or a ChatRequest's conversation).
#pragma once

#include <atomic>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "engine/runtime/request.h"
#include "grpcpp/server_context.h"
#include "grpcpp/support/byte_buffer.h"
#include "grpcpp/support/server_callback.h"
#include "server/engine_call.h"
#include "server/spqr_service.h"
#include "spqr/v1/spqr.pb.h"

namespace spqr {

// Where a generating call's request comes from. The default (GeneratePrompt) parses a
// GenerateRequest; Chat's parses a ChatRequest and renders its messages (spqr_service_chat.cc).
class CallPrompt {
 public:
  virtual ~CallPrompt() = default;
  // On the gRPC thread, bounded work: parse and admit the payload, fill `request` (at least the
  // generation options: sampling, stopping, response, request id, priority), the engine id and
  // the client-visible id. A non-OK status is what the call finishes with.
  virtual grpc::Status Admit(SpqrServiceImpl* service, grpc::CallbackServerContext* context,
                             const char* method, const grpc::ByteBuffer& payload,
                             v1::GenerateRequest* request, std::string* engine_id,
                             std::string* client_id) = 0;
  // On the work pool: the engine request (tokenizing happens here).
  virtual absl::StatusOr<GenerateRequest> MakeRequest(SpqrServiceImpl* service,
                                                      const v1::GenerateRequest& request,
                                                      const std::string& engine_id) = 0;
};

// Generate's and GenerateUnary's: SpqrServiceImpl::AdmitGenerate, then MakeEngineRequest.
class GeneratePrompt final : public CallPrompt {
 public:
  grpc::Status Admit(SpqrServiceImpl* service, grpc::CallbackServerContext* context,
                     const char* method, const grpc::ByteBuffer& payload,
                     v1::GenerateRequest* request, std::string* engine_id,
                     std::string* client_id) override;
  absl::StatusOr<GenerateRequest> MakeRequest(SpqrServiceImpl* service,
                                              const v1::GenerateRequest& request,
                                              const std::string& engine_id) override;
};

// The two ways of answering a generating call (spqr_service_generate.cc): streamed (one
// GenerateResponse per step with output) or unary (one GenerateResponse at the end). `method` is
// the metric and log label, a string literal.
grpc::ServerWriteReactor<grpc::ByteBuffer>* StartStreamedGeneration(
    SpqrServiceImpl* service, grpc::CallbackServerContext* context, const grpc::ByteBuffer& payload,
    const char* method, std::unique_ptr<CallPrompt> prompt);
grpc::ServerUnaryReactor* StartUnaryGeneration(SpqrServiceImpl* service,
                                               grpc::CallbackServerContext* context,
                                               const grpc::ByteBuffer& payload,
                                               grpc::ByteBuffer* response, const char* method,
                                               std::unique_ptr<CallPrompt> prompt);

// `Reactor`: grpc::ServerWriteReactor<grpc::ByteBuffer> (streamed) or grpc::ServerUnaryReactor.
template <typename Reactor>
class GenerateCallBase : public Reactor {
 public:
  void OnCancel() override;
  void OnDone() override;

 protected:
  // `method`: the metric and log label ("Generate", ...), a string literal.
  GenerateCallBase(SpqrServiceImpl* service, const char* method,
                   std::unique_ptr<CallPrompt> prompt);
  ~GenerateCallBase() override = default;

  // Admits the call (CallPrompt::Admit) and posts the rest to the work pool; a
  // refusal ends the call through FinishEarly. The derived constructor calls it last (the hooks
  // are virtual).
  void Begin(grpc::CallbackServerContext* context, const grpc::ByteBuffer& payload);

  // Hooks, called on the work pool before Submit: Attach makes the call reachable from the
  // engine callback Deliverer() returns (which must hold the call's shared state, not `this`);
  // Detach undoes it when Submit fails (no callback will come).
  virtual void Attach() = 0;
  virtual void Detach() = 0;
  virtual OutputCallback Deliverer() = 0;
  // Ends a call that has no engine request (refused, cancelled before Submit, Submit failed).
  virtual void FinishEarly(const grpc::Status& status) = 0;
  // Called by OnCancel first.
  virtual void OnClientCancel() {}

  SpqrServiceImpl* const service_;
  const char* const method_;
  const std::unique_ptr<CallPrompt> prompt_;
  v1::GenerateRequest request_;
  std::string engine_id_;
  std::string client_id_;  // the request's id, else engine_id_
  const std::shared_ptr<CallFlags> flags_ = std::make_shared<CallFlags>();
  // Set by an Abort call (SpqrServiceImpl::Abort) that cancelled the engine request.
  const std::shared_ptr<std::atomic<bool>> aborted_ = std::make_shared<std::atomic<bool>>(false);

 private:
  // On the work pool. Once Submit succeeded the call may end (on the engine thread) at any
  // moment: nothing after it touches `this`.
  void Start(grpc::CallbackServerContext* context);
};

extern template class GenerateCallBase<grpc::ServerWriteReactor<grpc::ByteBuffer>>;
extern template class GenerateCallBase<grpc::ServerUnaryReactor>;

}  // namespace spqr
