#include "server/generate_call.h"

#include <utility>

#include "server/grpc_status.h"
#include "server/log.h"
#include "server/request_validation.h"

namespace spqr {

grpc::Status GeneratePrompt::Admit(SpqrServiceImpl* service, grpc::CallbackServerContext* context,
                                   const char* method, const grpc::ByteBuffer& payload,
                                   v1::GenerateRequest* request, std::string* engine_id,
                                   std::string* client_id) {
  return service->AdmitGenerate(context, method, payload, request, engine_id, client_id);
}

absl::StatusOr<GenerateRequest> GeneratePrompt::MakeRequest(SpqrServiceImpl* service,
                                                            const v1::GenerateRequest& request,
                                                            const std::string& engine_id) {
  return MakeEngineRequest(request, service->engine()->model().tokenizer.get(), service->limits(),
                           engine_id);
}

template <typename Reactor>
GenerateCallBase<Reactor>::GenerateCallBase(SpqrServiceImpl* service, const char* method,
                                            std::unique_ptr<CallPrompt> prompt)
    : service_(service), method_(method), prompt_(std::move(prompt)) {
  service_->CallStarted();
}

template <typename Reactor>
void GenerateCallBase<Reactor>::Begin(grpc::CallbackServerContext* context,
                                      const grpc::ByteBuffer& payload) {
  if (grpc::Status s =
          prompt_->Admit(service_, context, method_, payload, &request_, &engine_id_, &client_id_);
      !s.ok()) {
    FinishEarly(s);
    return;
  }
  service_->work_pool().Post([this, context] { Start(context); });
}

template <typename Reactor>
void GenerateCallBase<Reactor>::OnCancel() {
  OnClientCancel();
  flags_->cancelled = true;
  if (flags_->submitted) service_->engine()->Cancel(engine_id_);
}

template <typename Reactor>
void GenerateCallBase<Reactor>::OnDone() {
  service_->CallDone();
  delete this;
}

template <typename Reactor>
void GenerateCallBase<Reactor>::Start(grpc::CallbackServerContext* context) {
  if (flags_->cancelled) {
    FinishEarly(grpc::Status(grpc::StatusCode::CANCELLED, "the request was cancelled"));
    return;
  }
  Engine* engine = service_->engine();
  absl::StatusOr<GenerateRequest> engine_request =
      prompt_->MakeRequest(service_, request_, engine_id_);
  if (!engine_request.ok()) {
    FinishEarly(ToGrpcStatus(engine_request.status()));
    return;
  }
  engine_request->deadline = CallDeadline(context);
  Attach();
  // Registered for Abort before the id goes out; the id goes out at once (before any token) so
  // that the client can Abort a request that is still queued.
  service_->EngineRequestStarted(engine_id_, client_id_, service_->CallerKey(context), aborted_);
  context->AddInitialMetadata(kRequestIdMetadataKey, client_id_);
  this->StartSendInitialMetadata();
  Logf(LogLevel::kDebug, "%s %s (client id %s) submitting", method_, engine_id_,
       LogSafe(client_id_));
  const std::shared_ptr<CallFlags> flags = flags_;
  const std::shared_ptr<std::atomic<bool>> aborted = aborted_;
  const std::string engine_id = engine_id_;
  absl::Status submitted = engine->Submit(*std::move(engine_request), Deliverer());
  if (!submitted.ok()) {  // no callback will come: the call is still ours
    service_->EngineRequestDone(engine_id_);
    Detach();
    FinishEarly(service_->SubmitFailed(submitted, context));
    return;
  }
  flags->submitted = true;
  // A cancellation or an Abort that came before Submit found no engine request to cancel.
  if (flags->cancelled || aborted->load()) engine->Cancel(engine_id);
}

template class GenerateCallBase<grpc::ServerWriteReactor<grpc::ByteBuffer>>;
template class GenerateCallBase<grpc::ServerUnaryReactor>;

}  // namespace spqr
