// The start of a call that runs one generation (Generate, GenerateUnary; a chat RPC would be one
// more): admission on the gRPC thread, then on the service's work pool tokenizing, registration
// for Abort, the request id in the initial metadata and Engine::Submit, with a client cancellation
// forwarded to the engine whichever of OnCancel and Submit comes second. The derived reactor
// decides how the engine's chunks become responses (hooks below).
#pragma once

#include <atomic>
#include <memory>
#include <string>

#include "grpcpp/server_context.h"
#include "grpcpp/support/byte_buffer.h"
#include "grpcpp/support/server_callback.h"
#include "server/engine_call.h"
#include "server/spqr_service.h"
#include "spqr/v1/spqr.pb.h"

namespace spqr {

// `Reactor`: grpc::ServerWriteReactor<grpc::ByteBuffer> (streamed) or grpc::ServerUnaryReactor.
template <typename Reactor>
class GenerateCallBase : public Reactor {
 public:
  void OnCancel() override;
  void OnDone() override;

 protected:
  // `method`: the metric and log label ("Generate", ...), a string literal.
  GenerateCallBase(SpqrServiceImpl* service, const char* method);
  ~GenerateCallBase() override = default;

  // Admits the call (SpqrServiceImpl::AdmitGenerate) and posts the rest to the work pool; a
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
