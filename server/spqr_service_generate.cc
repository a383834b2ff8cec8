// SpqrServiceImpl::Generate (server-streamed) and GenerateUnary: one generation each, started by
// GenerateCallBase (generate_call.h); they differ only in how the engine's chunks become
// responses. Chat and ChatUnary (spqr_service_chat.cc) answer through the same two reactors.
#include <deque>
#include <memory>
#include <utility>

#include "absl/synchronization/mutex.h"
#include "server/engine_call.h"
#include "server/generate_call.h"
#include "server/request_parsing.h"
#include "server/request_validation.h"
#include "server/spqr_service.h"

namespace spqr {
namespace {

// Server-side streaming Generate. Engine chunks arrive on the engine thread (Deliver) and are
// queued; whoever finds no write in flight becomes the "pumper" and issues the next write (all
// queued chunks merged into one response), or Finish after the final chunk. Finish is only
// called by the pumper, so the reactor outlives every Deliver that can reach it.
class GenerateStream final : public GenerateCallBase<grpc::ServerWriteReactor<grpc::ByteBuffer>> {
 public:
  GenerateStream(SpqrServiceImpl* service, grpc::CallbackServerContext* context,
                 const grpc::ByteBuffer& payload, const char* method,
                 std::unique_ptr<CallPrompt> prompt)
      : GenerateCallBase(service, method, std::move(prompt)), shared_(std::make_shared<Shared>()) {
    Begin(context, payload);
  }

  void OnWriteDone(bool ok) override {
    if (!ok && !client_gone_.exchange(true)) {
      // The stream broke (client gone): stop the work; the final chunk ends the call.
      service_->engine()->Cancel(engine_id_);
    }
    Pump();
  }

 private:
  struct Shared {
    absl::Mutex mu;
    std::deque<OutputChunk> pending ABSL_GUARDED_BY(mu);
    bool pumping ABSL_GUARDED_BY(mu) = false;
    GenerateStream* stream ABSL_GUARDED_BY(mu) = nullptr;  // null once the final chunk is taken
    InterTokenClock clock;                                 // engine thread only
  };

  void OnClientCancel() override { client_gone_ = true; }

  void Attach() override {
    shape_ = ResponseShapeOf(request_);
    absl::MutexLock lock(&shared_->mu);
    shared_->stream = this;
  }

  void Detach() override {
    absl::MutexLock lock(&shared_->mu);
    shared_->stream = nullptr;
  }

  OutputCallback Deliverer() override {
    return [shared = shared_](OutputChunk chunk) { Deliver(shared, std::move(chunk)); };
  }

  void FinishEarly(const grpc::Status& status) override {
    service_->RecordCallEnd(method_, engine_id_, client_id_, status, "");
    Finish(status);
  }

  static void Deliver(const std::shared_ptr<Shared>& shared, OutputChunk chunk) {
    GenerateStream* stream = nullptr;
    {
      absl::MutexLock lock(&shared->mu);
      if (shared->stream == nullptr) return;
      stream = shared->stream;
      shared->clock.Observe(chunk, stream->service_->metrics());
      if (chunk.finished) {
        stream->service_->EngineRequestFinished(stream->engine_id_, chunk);
      }
      shared->pending.push_back(std::move(chunk));
      if (shared->pumping) return;
      shared->pumping = true;
    }
    stream->Pump();
  }

  // Called only by the pumper: issues one write or Finish, or gives up the pumper role.
  void Pump() {
    for (;;) {
      bool final = false;
      OutputChunk final_chunk;
      response_.Clear();
      response_.set_request_id(client_id_);
      {
        absl::MutexLock lock(&shared_->mu);
        if (shared_->pending.empty()) {
          shared_->pumping = false;
          return;
        }
        while (!shared_->pending.empty()) {
          OutputChunk& chunk = shared_->pending.front();
          AppendChunk(chunk, shape_, service_->engine()->model().tokenizer.get(), &response_);
          if (chunk.finished) {
            final = true;
            final_chunk = std::move(chunk);
          }
          shared_->pending.pop_front();
        }
        if (final) shared_->stream = nullptr;
      }
      if (final) {
        grpc::Status status = FinalStatus(final_chunk, flags_->cancelled, service_->draining(),
                                          aborted_->load(), /*has_finish_reason=*/true);
        if (client_gone_ && status.ok()) {
          status = grpc::Status(grpc::StatusCode::CANCELLED, "the client went away");
        }
        service_->RecordCallEnd(method_, engine_id_, client_id_, status, FinishDetail(final_chunk));
        if (status.ok()) {
          write_buffer_ = SerializeResponse(response_);
          StartWriteAndFinish(&write_buffer_, grpc::WriteOptions(), status);
        } else {
          Finish(status);
        }
        return;
      }
      if (client_gone_) continue;  // nobody to write to; wait for the final chunk
      if (response_.text().empty() && response_.token_ids().empty() &&
          response_.logprobs().empty()) {
        continue;  // nothing visible (text held back for a possible stop string)
      }
      write_buffer_ = SerializeResponse(response_);
      StartWrite(&write_buffer_);
      return;
    }
  }

  std::shared_ptr<Shared> shared_;
  ResponseShape shape_;  // set in Attach, before any chunk can arrive
  std::atomic<bool> client_gone_{false};
  v1::GenerateResponse response_;  // the response being built
  grpc::ByteBuffer write_buffer_;  // the one write in flight
};

// GenerateUnary: chunks are accumulated into one response, sent when the final chunk arrives.
class GenerateUnaryCall final : public GenerateCallBase<grpc::ServerUnaryReactor> {
 public:
  GenerateUnaryCall(SpqrServiceImpl* service, grpc::CallbackServerContext* context,
                    const grpc::ByteBuffer& payload, grpc::ByteBuffer* response, const char* method,
                    std::unique_ptr<CallPrompt> prompt)
      : GenerateCallBase(service, method, std::move(prompt)),
        response_(response),
        shared_(std::make_shared<Shared>()) {
    Begin(context, payload);
  }

 private:
  struct Shared {
    absl::Mutex mu;
    GenerateUnaryCall* call ABSL_GUARDED_BY(mu) = nullptr;
    v1::GenerateResponse response ABSL_GUARDED_BY(mu);
    ResponseShape shape;
    InterTokenClock clock;  // engine thread only
  };

  void Attach() override {
    absl::MutexLock lock(&shared_->mu);
    shared_->call = this;
    shared_->shape = ResponseShapeOf(request_);
    shared_->response.set_request_id(client_id_);
  }

  void Detach() override {
    absl::MutexLock lock(&shared_->mu);
    shared_->call = nullptr;
  }

  OutputCallback Deliverer() override {
    return [shared = shared_](OutputChunk chunk) { Deliver(shared, std::move(chunk)); };
  }

  void FinishEarly(const grpc::Status& status) override { FinishWith(status); }

  static void Deliver(const std::shared_ptr<Shared>& shared, OutputChunk chunk) {
    GenerateUnaryCall* call = nullptr;
    {
      absl::MutexLock lock(&shared->mu);
      if (shared->call == nullptr) return;
      shared->clock.Observe(chunk, shared->call->service_->metrics());
      AppendChunk(chunk, shared->shape, shared->call->service_->engine()->model().tokenizer.get(),
                  &shared->response);
      if (!chunk.finished) return;
      call = shared->call;
      shared->call = nullptr;
      call->result_.Swap(&shared->response);
    }
    call->service_->EngineRequestFinished(call->engine_id_, chunk);
    call->FinishWith(FinalStatus(chunk, call->flags_->cancelled, call->service_->draining(),
                                 call->aborted_->load(), /*has_finish_reason=*/true),
                     FinishDetail(chunk));
  }

  void FinishWith(const grpc::Status& status, const std::string& detail = "") {
    service_->RecordCallEnd(method_, engine_id_, client_id_, status, detail);
    if (status.ok()) *response_ = SerializeResponse(result_);
    Finish(status);
  }

  grpc::ByteBuffer* const response_;
  std::shared_ptr<Shared> shared_;
  v1::GenerateResponse result_;
};

}  // namespace

grpc::ServerWriteReactor<grpc::ByteBuffer>* StartStreamedGeneration(
    SpqrServiceImpl* service, grpc::CallbackServerContext* context, const grpc::ByteBuffer& payload,
    const char* method, std::unique_ptr<CallPrompt> prompt) {
  return new GenerateStream(service, context, payload, method, std::move(prompt));
}

grpc::ServerUnaryReactor* StartUnaryGeneration(SpqrServiceImpl* service,
                                               grpc::CallbackServerContext* context,
                                               const grpc::ByteBuffer& payload,
                                               grpc::ByteBuffer* response, const char* method,
                                               std::unique_ptr<CallPrompt> prompt) {
  return new GenerateUnaryCall(service, context, payload, response, method, std::move(prompt));
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* SpqrServiceImpl::Generate(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request) {
  return StartStreamedGeneration(this, context, *request, "Generate",
                                 std::make_unique<GeneratePrompt>());
}

grpc::ServerUnaryReactor* SpqrServiceImpl::GenerateUnary(grpc::CallbackServerContext* context,
                                                         const grpc::ByteBuffer* request,
                                                         grpc::ByteBuffer* response) {
  return StartUnaryGeneration(this, context, *request, response, "GenerateUnary",
                              std::make_unique<GeneratePrompt>());
}

}  // namespace spqr
