#include "server/spqr_service.h"

#include <algorithm>
#include <chrono>
#include <deque>
#include <memory>
#include <optional>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "server/call_auth.h"
#include "server/log.h"

namespace spqr {
namespace {

// The engine deadline of a call: the gRPC deadline, if the client set one.
std::optional<absl::Time> CallDeadline(const grpc::CallbackServerContext* context) {
  const auto deadline = context->deadline();
  if (deadline == std::chrono::system_clock::time_point::max()) return std::nullopt;
  return absl::FromChrono(deadline);
}

// The RPC status of a finished engine request (OK for normal finishes).
// `aborted`: an Abort call cancelled the request; a generation then ends normally, its last
// response carrying FINISH_REASON_CANCELLED.
grpc::Status FinalStatus(const OutputChunk& chunk, bool client_cancelled, bool draining,
                         bool aborted, bool has_finish_reason) {
  switch (chunk.finish_reason) {
    case FinishReason::kError:
      return chunk.error.ok() ? grpc::Status(grpc::StatusCode::INTERNAL, "engine error")
                              : ToGrpcStatus(chunk.error);
    case FinishReason::kDeadline:
      return grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED,
                          absl::StrFormat("deadline exceeded after %d generated tokens",
                                          chunk.usage.completion_tokens));
    case FinishReason::kCancelled:
      if (aborted && !client_cancelled) {
        if (has_finish_reason) return grpc::Status::OK;
        return grpc::Status(grpc::StatusCode::CANCELLED,
                            "the request was aborted by an Abort call");
      }
      if (!client_cancelled && draining) {
        return grpc::Status(grpc::StatusCode::UNAVAILABLE,
                            "the server is shutting down; the request was cancelled at the end "
                            "of the drain timeout");
      }
      return grpc::Status(grpc::StatusCode::CANCELLED, "the request was cancelled");
    default:
      return grpc::Status::OK;
  }
}

// "finish=length prompt=12 completion=30 e2e=0.412s" for the request log.
std::string FinishDetail(const OutputChunk& chunk) {
  return absl::StrFormat("finish=%s prompt=%d completion=%d cached=%d e2e=%.3fs",
                         FinishReasonLabel(chunk.finish_reason), chunk.usage.prompt_tokens,
                         chunk.usage.completion_tokens, chunk.usage.cached_prompt_tokens,
                         absl::ToDoubleSeconds(chunk.timings.e2e));
}

// Server-side streaming Generate. Engine chunks arrive on the engine thread (Deliver) and are
// queued; whoever finds no write in flight becomes the "pumper" and issues the next write (all
// queued chunks merged into one response), or Finish after the final chunk. Finish is only
// called by the pumper, so the reactor outlives every Deliver that can reach it.
class GenerateStream final : public grpc::ServerWriteReactor<v1::GenerateResponse> {
 public:
  GenerateStream(SpqrServiceImpl* service, grpc::CallbackServerContext* context,
                 const v1::GenerateRequest& request)
      : service_(service), shared_(std::make_shared<Shared>()) {
    service_->CallStarted();
    shape_ = ResponseShapeOf(request);
    absl::StatusOr<GenerateRequest> engine_request;
    if (grpc::Status s = service_->AdmitGenerate(context, "Generate", request, &engine_request,
                                                 &engine_id_, &client_id_);
        !s.ok()) {
      FinishEarly(s);
      return;
    }
    Engine* engine = service_->engine();
    shared_->stream = this;
    // Registered for Abort before the id goes out; the id goes out at once (before any token) so
    // that the client can Abort a request that is still queued.
    service_->EngineRequestStarted(engine_id_, client_id_, service_->CallerKey(context), aborted_);
    context->AddInitialMetadata(kRequestIdMetadataKey, client_id_);
    StartSendInitialMetadata();
    std::shared_ptr<Shared> shared = shared_;
    absl::Status submitted =
        engine->Submit(*std::move(engine_request),
                       [shared](OutputChunk chunk) { Deliver(shared, std::move(chunk)); });
    if (!submitted.ok()) {
      service_->EngineRequestDone(engine_id_);
      shared_->stream = nullptr;
      FinishEarly(service_->SubmitFailed(submitted, context));
      return;
    }
    submitted_ = true;
    // An Abort that came between the registration and Submit found no engine request to cancel.
    if (aborted_->load()) engine->Cancel(engine_id_);
    Logf(LogLevel::kDebug, "Generate %s (client id %s) submitted", engine_id_, client_id_);
  }

  void OnWriteDone(bool ok) override {
    if (!ok && !client_gone_.exchange(true)) {
      // The stream broke (client gone): stop the work; the final chunk ends the call.
      service_->engine()->Cancel(engine_id_);
    }
    Pump();
  }

  void OnCancel() override {
    client_cancelled_ = true;
    client_gone_ = true;
    if (submitted_) service_->engine()->Cancel(engine_id_);
  }

  void OnDone() override {
    service_->CallDone();
    delete this;
  }

 private:
  struct Shared {
    absl::Mutex mu;
    std::deque<OutputChunk> pending ABSL_GUARDED_BY(mu);
    bool pumping ABSL_GUARDED_BY(mu) = false;
    GenerateStream* stream ABSL_GUARDED_BY(mu) = nullptr;  // null once the final chunk is taken
    std::optional<absl::Time> last_token_time;  // engine thread only; for inter-token latency
  };

  static void Deliver(const std::shared_ptr<Shared>& shared, OutputChunk chunk) {
    GenerateStream* stream = nullptr;
    {
      absl::MutexLock lock(&shared->mu);
      if (shared->stream == nullptr) return;
      stream = shared->stream;
      if (!chunk.token_ids.empty()) {
        const absl::Time now = absl::Now();
        if (shared->last_token_time.has_value()) {
          stream->service_->metrics()->RecordInterTokenLatency(
              static_cast<int>(chunk.token_ids.size()),
              absl::ToDoubleSeconds(now - *shared->last_token_time));
        }
        shared->last_token_time = now;
      }
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
        grpc::Status status = FinalStatus(final_chunk, client_cancelled_, service_->draining(),
                                          aborted_->load(), /*has_finish_reason=*/true);
        if (client_gone_ && status.ok()) {
          status = grpc::Status(grpc::StatusCode::CANCELLED, "the client went away");
        }
        service_->RecordCallEnd("Generate", engine_id_, client_id_, status,
                                FinishDetail(final_chunk));
        if (status.ok()) {
          StartWriteAndFinish(&response_, grpc::WriteOptions(), status);
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
      StartWrite(&response_);
      return;
    }
  }

  void FinishEarly(const grpc::Status& status) {
    service_->RecordCallEnd("Generate", engine_id_, client_id_, status, "");
    Finish(status);
  }

  SpqrServiceImpl* const service_;
  std::shared_ptr<Shared> shared_;
  ResponseShape shape_;
  std::string engine_id_;
  std::string client_id_;
  bool submitted_ = false;
  std::atomic<bool> client_cancelled_{false};
  std::atomic<bool> client_gone_{false};
  const std::shared_ptr<std::atomic<bool>> aborted_ = std::make_shared<std::atomic<bool>>(false);
  v1::GenerateResponse response_;  // the one write in flight
};

// GenerateUnary: chunks are accumulated into one response, sent when the final chunk arrives.
class GenerateUnaryCall final : public grpc::ServerUnaryReactor {
 public:
  GenerateUnaryCall(SpqrServiceImpl* service, grpc::CallbackServerContext* context,
                    const v1::GenerateRequest& request, v1::GenerateResponse* response)
      : service_(service), response_(response), shared_(std::make_shared<Shared>()) {
    service_->CallStarted();
    absl::StatusOr<GenerateRequest> engine_request;
    if (grpc::Status s = service_->AdmitGenerate(context, "GenerateUnary", request, &engine_request,
                                                 &engine_id_, &client_id_);
        !s.ok()) {
      FinishWith(s);
      return;
    }
    Engine* engine = service_->engine();
    shared_->call = this;
    shared_->shape = ResponseShapeOf(request);
    shared_->response.set_request_id(client_id_);
    service_->EngineRequestStarted(engine_id_, client_id_, service_->CallerKey(context), aborted_);
    context->AddInitialMetadata(kRequestIdMetadataKey, client_id_);
    StartSendInitialMetadata();
    std::shared_ptr<Shared> shared = shared_;
    absl::Status submitted =
        engine->Submit(*std::move(engine_request),
                       [shared](OutputChunk chunk) { Deliver(shared, std::move(chunk)); });
    if (!submitted.ok()) {
      service_->EngineRequestDone(engine_id_);
      shared_->call = nullptr;
      FinishWith(service_->SubmitFailed(submitted, context));
      return;
    }
    submitted_ = true;
    if (aborted_->load()) engine->Cancel(engine_id_);  // Abort raced with Submit
  }

  void OnCancel() override {
    client_cancelled_ = true;
    if (submitted_) service_->engine()->Cancel(engine_id_);
  }

  void OnDone() override {
    service_->CallDone();
    delete this;
  }

 private:
  struct Shared {
    absl::Mutex mu;
    GenerateUnaryCall* call ABSL_GUARDED_BY(mu) = nullptr;
    v1::GenerateResponse response ABSL_GUARDED_BY(mu);
    ResponseShape shape;
    std::optional<absl::Time> last_token_time;  // engine thread only; for inter-token latency
  };

  static void Deliver(const std::shared_ptr<Shared>& shared, OutputChunk chunk) {
    GenerateUnaryCall* call = nullptr;
    {
      absl::MutexLock lock(&shared->mu);
      if (shared->call == nullptr) return;
      if (!chunk.token_ids.empty()) {
        const absl::Time now = absl::Now();
        if (shared->last_token_time.has_value()) {
          shared->call->service_->metrics()->RecordInterTokenLatency(
              static_cast<int>(chunk.token_ids.size()),
              absl::ToDoubleSeconds(now - *shared->last_token_time));
        }
        shared->last_token_time = now;
      }
      AppendChunk(chunk, shared->shape, shared->call->service_->engine()->model().tokenizer.get(),
                  &shared->response);
      if (!chunk.finished) return;
      call = shared->call;
      shared->call = nullptr;
      call->response_->Swap(&shared->response);
    }
    call->service_->EngineRequestFinished(call->engine_id_, chunk);
    call->FinishWith(FinalStatus(chunk, call->client_cancelled_, call->service_->draining(),
                                 call->aborted_->load(), /*has_finish_reason=*/true),
                     FinishDetail(chunk));
  }

  void FinishWith(const grpc::Status& status, const std::string& detail = "") {
    service_->RecordCallEnd("GenerateUnary", engine_id_, client_id_, status, detail);
    Finish(status);
  }

  SpqrServiceImpl* const service_;
  v1::GenerateResponse* const response_;
  std::shared_ptr<Shared> shared_;
  std::string engine_id_;
  std::string client_id_;
  const std::shared_ptr<std::atomic<bool>> aborted_ = std::make_shared<std::atomic<bool>>(false);
  bool submitted_ = false;
  std::atomic<bool> client_cancelled_{false};
};

// Score: one engine request per sequence (a text, or each pair), run concurrently; the call ends
// when all have finished.
class ScoreCall final : public grpc::ServerUnaryReactor {
 public:
  ScoreCall(SpqrServiceImpl* service, grpc::CallbackServerContext* context,
            const v1::ScoreRequest& request, v1::ScoreResponse* response)
      : service_(service), response_(response), shared_(std::make_shared<Shared>()) {
    service_->CallStarted();
    if (grpc::Status s = service_->Admit(context, "Score"); !s.ok()) {
      FinishWith(s);
      return;
    }
    Engine* engine = service_->engine();
    base_id_ = service_->NextEngineId();
    const std::string& base_id = base_id_;
    response_->set_request_id(request.request_id().empty() ? base_id : request.request_id());
    absl::StatusOr<std::vector<ScoreSequence>> sequences =
        MakeScoreSequences(request, engine->model().tokenizer.get(), service_->limits());
    if (!sequences.ok()) {
      FinishWith(ToGrpcStatus(sequences.status()));
      return;
    }
    pairs_ = request.input_case() == v1::ScoreRequest::kPairs;
    const size_t n = sequences->size();
    {
      absl::MutexLock lock(&shared_->mu);
      shared_->call = this;
      shared_->sequences = *std::move(sequences);
      shared_->results.resize(n);
      shared_->remaining = static_cast<int>(n);
      for (size_t i = 0; i < n; ++i) {
        engine_ids_.push_back(pairs_ ? absl::StrCat(base_id, ".p", i) : base_id);
      }
    }
    const std::optional<absl::Time> deadline = CallDeadline(context);
    size_t submitted = 0;
    grpc::Status submit_error;
    for (size_t i = 0; i < n; ++i) {
      GenerateRequest engine_request = MakeScoreEngineRequest(
          shared_->sequences[i], request.top_logprobs(), request.priority(), engine_ids_[i]);
      engine_request.deadline = deadline;
      service_->EngineRequestStarted(engine_ids_[i], response_->request_id(),
                                     service_->CallerKey(context), aborted_);
      std::shared_ptr<Shared> shared = shared_;
      absl::Status s = engine->Submit(std::move(engine_request), [shared, i](OutputChunk chunk) {
        Deliver(shared, i, std::move(chunk));
      });
      if (!s.ok()) {
        service_->EngineRequestDone(engine_ids_[i]);
        submit_error = service_->SubmitFailed(s, context);
        break;
      }
      ++submitted;
      submitted_.store(submitted);
      if (aborted_->load()) engine->Cancel(engine_ids_[i]);  // Abort raced with Submit
    }
    if (submit_error.ok()) return;
    // Some sequence could not be queued: stop the others and fail the call once they ended.
    for (size_t i = 0; i < submitted; ++i) engine->Cancel(engine_ids_[i]);
    bool finish_now = false;
    {
      absl::MutexLock lock(&shared_->mu);
      shared_->error = submit_error;
      shared_->remaining -= static_cast<int>(n - submitted);
      if (shared_->remaining == 0) {
        shared_->call = nullptr;
        finish_now = true;
      }
    }
    if (finish_now) FinishWith(submit_error);
  }

  void OnCancel() override {
    client_cancelled_ = true;
    for (size_t i = 0; i < submitted_; ++i) service_->engine()->Cancel(engine_ids_[i]);
  }

  void OnDone() override {
    service_->CallDone();
    delete this;
  }

 private:
  struct Shared {
    absl::Mutex mu;
    ScoreCall* call ABSL_GUARDED_BY(mu) = nullptr;
    std::vector<ScoreSequence> sequences;
    std::vector<std::vector<TokenLogprob>> results ABSL_GUARDED_BY(mu);
    int remaining ABSL_GUARDED_BY(mu) = 0;
    grpc::Status error ABSL_GUARDED_BY(mu);
  };

  static void Deliver(const std::shared_ptr<Shared>& shared, size_t index, OutputChunk chunk) {
    ScoreCall* call = nullptr;
    grpc::Status error;
    {
      absl::MutexLock lock(&shared->mu);
      if (shared->call == nullptr) return;
      if (!chunk.prompt_logprobs.empty()) shared->results[index] = std::move(chunk.prompt_logprobs);
      if (!chunk.finished) return;
      ScoreCall* self = shared->call;
      self->service_->EngineRequestFinished(self->engine_ids_[index], chunk);
      grpc::Status status = FinalStatus(chunk, self->client_cancelled_, self->service_->draining(),
                                        self->aborted_->load(), /*has_finish_reason=*/false);
      if (!status.ok() && shared->error.ok()) {
        shared->error = status;
        // One failed: the others are useless now.
        for (size_t i = 0; i < self->submitted_; ++i) {
          if (i != index) self->service_->engine()->Cancel(self->engine_ids_[i]);
        }
      }
      if (--shared->remaining > 0) return;
      call = self;
      shared->call = nullptr;
      error = shared->error;
    }
    if (!error.ok()) {
      call->FinishWith(error);
      return;
    }
    call->FinishWith(call->BuildResponse(*shared));
  }

  // Fills the response from the prompt logprobs of every sequence (all finished).
  grpc::Status BuildResponse(Shared& shared) ABSL_NO_THREAD_SAFETY_ANALYSIS {
    const Tokenizer* tokenizer = service_->engine()->model().tokenizer.get();
    int32_t prompt_tokens = 0;
    for (size_t i = 0; i < shared.sequences.size(); ++i) {
      const ScoreSequence& seq = shared.sequences[i];
      const std::vector<TokenLogprob>& logprobs = shared.results[i];
      prompt_tokens += static_cast<int32_t>(seq.tokens.size());
      if (logprobs.size() + 1 != seq.tokens.size()) {
        return grpc::Status(grpc::StatusCode::INTERNAL,
                            absl::StrFormat("the engine returned %d prompt logprobs for %d tokens",
                                            logprobs.size(), seq.tokens.size()));
      }
      // logprobs[j] scores token j + 1; the scored part starts at num_context_tokens.
      const size_t first = static_cast<size_t>(seq.num_context_tokens) - 1;
      double sum = 0;
      bool greedy = true;
      if (pairs_) {
        v1::PairScore* pair = response_->add_pair_scores();
        for (size_t j = first; j < logprobs.size(); ++j) {
          sum += logprobs[j].logprob;
          greedy = greedy && logprobs[j].is_greedy;
          FillTokenLogprob(logprobs[j], tokenizer, pair->add_token_logprobs());
        }
        pair->set_sum_logprob(sum);
        pair->set_is_greedy(greedy);
        pair->set_num_context_tokens(seq.num_context_tokens);
        pair->set_num_continuation_tokens(static_cast<int32_t>(seq.tokens.size()) -
                                          seq.num_context_tokens);
      } else {
        for (size_t j = first; j < logprobs.size(); ++j) {
          sum += logprobs[j].logprob;
          FillTokenLogprob(logprobs[j], tokenizer, response_->add_token_logprobs());
        }
        response_->set_sum_logprob(sum);
        response_->set_num_scored_tokens(static_cast<int32_t>(logprobs.size() - first));
      }
    }
    response_->mutable_usage()->set_prompt_tokens(prompt_tokens);
    return grpc::Status::OK;
  }

  void FinishWith(const grpc::Status& status) {
    service_->RecordCallEnd("Score", base_id_, response_->request_id(), status,
                            status.ok()
                                ? absl::StrFormat("sequences=%d prompt=%d", engine_ids_.size(),
                                                  response_->usage().prompt_tokens())
                                : "");
    Finish(status);
  }

  SpqrServiceImpl* const service_;
  v1::ScoreResponse* const response_;
  std::shared_ptr<Shared> shared_;
  std::string base_id_;
  std::vector<std::string> engine_ids_;
  // Read by Deliver on the engine thread while the constructor may still be submitting.
  std::atomic<size_t> submitted_{0};
  bool pairs_ = false;
  std::atomic<bool> client_cancelled_{false};
  const std::shared_ptr<std::atomic<bool>> aborted_ = std::make_shared<std::atomic<bool>>(false);
};

}  // namespace

const char* GrpcCodeName(grpc::StatusCode code) {
  static constexpr const char* kNames[] = {"OK",
                                           "CANCELLED",
                                           "UNKNOWN",
                                           "INVALID_ARGUMENT",
                                           "DEADLINE_EXCEEDED",
                                           "NOT_FOUND",
                                           "ALREADY_EXISTS",
                                           "PERMISSION_DENIED",
                                           "RESOURCE_EXHAUSTED",
                                           "FAILED_PRECONDITION",
                                           "ABORTED",
                                           "OUT_OF_RANGE",
                                           "UNIMPLEMENTED",
                                           "INTERNAL",
                                           "UNAVAILABLE",
                                           "DATA_LOSS",
                                           "UNAUTHENTICATED"};
  const int index = static_cast<int>(code);
  return index >= 0 && index < 17 ? kNames[index] : "UNKNOWN";
}

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

SpqrServiceImpl::SpqrServiceImpl(const ServerConfig& config, ServerMetrics* metrics)
    : config_(config), metrics_(metrics) {}

SpqrServiceImpl::~SpqrServiceImpl() = default;

void SpqrServiceImpl::SetEngine(Engine* engine) {
  limits_ = ResolveRequestLimits(config_, *engine);
  engine_.store(engine);
}

void SpqrServiceImpl::StartDraining() { draining_.store(true); }

void SpqrServiceImpl::RecordCallEnd(const char* method, const std::string& engine_id,
                                    const std::string& client_id, const grpc::Status& status,
                                    const std::string& detail) {
  metrics_->RecordRpc(method, GrpcCodeName(status.error_code()));
  // One line per call, with both ids so client logs and server logs can be joined.
  const std::string id = client_id.empty() || client_id == engine_id
                             ? engine_id
                             : absl::StrCat(engine_id, " (client ", client_id, ")");
  if (status.ok()) {
    Logf(LogLevel::kInfo, "%s %s OK %s", method, id, detail);
  } else {
    Logf(LogLevel::kInfo, "%s %s %s: %s %s", method, id, GrpcCodeName(status.error_code()),
         status.error_message(), detail);
  }
}

void SpqrServiceImpl::SetApiKeys(ApiKeys keys) { api_keys_ = std::move(keys); }

grpc::Status SpqrServiceImpl::Authenticate(const grpc::CallbackServerContext* context,
                                           const char* method) {
  return AuthenticateCall(api_keys_, *context, method, metrics_);
}

grpc::Status SpqrServiceImpl::Admit(const grpc::CallbackServerContext* context,
                                    const char* method) {
  if (grpc::Status s = Authenticate(context, method); !s.ok()) return s;
  return ToGrpcStatus(CheckAccepting());
}

absl::Status SpqrServiceImpl::CheckAccepting() const {
  if (draining_.load()) {
    return absl::UnavailableError("the server is shutting down and accepts no new requests");
  }
  if (engine_.load() == nullptr) {
    return absl::UnavailableError("the model is still loading; retry when health is SERVING");
  }
  return absl::OkStatus();
}

std::string SpqrServiceImpl::NextEngineId() { return absl::StrCat("r", next_id_.fetch_add(1)); }

grpc::Status SpqrServiceImpl::AdmitGenerate(const grpc::CallbackServerContext* context,
                                            const char* method, const v1::GenerateRequest& request,
                                            absl::StatusOr<GenerateRequest>* engine_request,
                                            std::string* engine_id, std::string* client_id) {
  if (grpc::Status s = Admit(context, method); !s.ok()) return s;
  *engine_id = NextEngineId();
  *client_id = request.request_id().empty() ? *engine_id : request.request_id();
  *engine_request =
      MakeEngineRequest(request, engine()->model().tokenizer.get(), limits(), *engine_id);
  if (!engine_request->ok()) return ToGrpcStatus(engine_request->status());
  (*engine_request)->deadline = CallDeadline(context);
  return grpc::Status::OK;
}

void SpqrServiceImpl::CallStarted() {
  metrics_->RpcStarted();
  absl::MutexLock lock(&mu_);
  ++inflight_calls_;
}

void SpqrServiceImpl::CallDone() {
  metrics_->RpcEnded();
  absl::MutexLock lock(&mu_);
  --inflight_calls_;
}

void SpqrServiceImpl::EngineRequestStarted(const std::string& engine_id,
                                           const std::string& client_id, int owner_key,
                                           std::shared_ptr<std::atomic<bool>> aborted) {
  absl::MutexLock lock(&mu_);
  live_engine_ids_[engine_id] = LiveRequest{client_id, owner_key, std::move(aborted)};
}

void SpqrServiceImpl::EngineRequestFinished(const std::string& engine_id,
                                            const OutputChunk& final_chunk) {
  metrics_->RecordRequestFinished(final_chunk);
  drain_rate_.RecordCompletion(absl::Now());
  EngineRequestDone(engine_id);
}

grpc::Status SpqrServiceImpl::SubmitFailed(const absl::Status& status,
                                           grpc::CallbackServerContext* context) {
  if (status.code() != absl::StatusCode::kResourceExhausted) return ToGrpcStatus(status);
  Engine* engine = engine_.load();
  const EngineStats stats = engine->GetStats();
  const EngineOptions& options = engine->options();
  // The queue has room again once enough waiting requests were scheduled; each finished request
  // frees a place in the batch for one of them.
  const bool count_bound = stats.waiting_requests >= options.max_queued_requests;
  const int64_t needed =
      count_bound ? int64_t{stats.waiting_requests} - options.max_queued_requests + 1 : 1;
  const int64_t pushback_ms = drain_rate_.PushbackMs(needed, absl::Now());
  context->AddTrailingMetadata(kRetryPushbackKey, absl::StrCat(pushback_ms));
  const std::string bound =
      count_bound ? absl::StrFormat("engine.max_queued_requests = %d", options.max_queued_requests)
                  : absl::StrFormat("engine.max_queued_prompt_tokens = %d",
                                    options.max_queued_prompt_tokens);
  return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                      absl::StrFormat("the engine's waiting queue is full (%s): %s; retry in about "
                                      "%d ms (trailing metadata %s)",
                                      bound, status.message(), pushback_ms, kRetryPushbackKey));
}

int SpqrServiceImpl::CallerKey(const grpc::CallbackServerContext* context) const {
  if (!api_keys_.enabled()) return -1;
  const auto& metadata = context->client_metadata();
  auto it = metadata.find("authorization");
  if (it == metadata.end()) return -1;
  return api_keys_.Find(absl::string_view(it->second.data(), it->second.size()));
}

bool SpqrServiceImpl::Abort(const std::string& client_id, int caller_key) {
  std::vector<std::string> engine_ids;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [engine_id, live] : live_engine_ids_) {
      if (live.client_id != client_id || live.owner_key != caller_key) continue;
      if (live.aborted != nullptr) live.aborted->store(true);
      engine_ids.push_back(engine_id);
    }
  }
  Engine* engine = engine_.load();
  if (engine == nullptr) return false;
  for (const std::string& id : engine_ids) engine->Cancel(id);
  return !engine_ids.empty();
}

void SpqrServiceImpl::EngineRequestDone(const std::string& engine_id) {
  absl::MutexLock lock(&mu_);
  live_engine_ids_.erase(engine_id);
}

int64_t SpqrServiceImpl::inflight_calls() {
  absl::MutexLock lock(&mu_);
  return inflight_calls_;
}

bool SpqrServiceImpl::WaitForIdle(absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return inflight_calls_ == 0; };
  return mu_.AwaitWithTimeout(absl::Condition(&idle), timeout);
}

void SpqrServiceImpl::CancelAll() {
  std::vector<std::string> ids;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [engine_id, live] : live_engine_ids_) ids.push_back(engine_id);
  }
  Engine* engine = engine_.load();
  if (engine == nullptr) return;
  for (const std::string& id : ids) engine->Cancel(id);
}

grpc::ServerWriteReactor<v1::GenerateResponse>* SpqrServiceImpl::Generate(
    grpc::CallbackServerContext* context, const v1::GenerateRequest* request) {
  return new GenerateStream(this, context, *request);
}

grpc::ServerUnaryReactor* SpqrServiceImpl::GenerateUnary(grpc::CallbackServerContext* context,
                                                         const v1::GenerateRequest* request,
                                                         v1::GenerateResponse* response) {
  return new GenerateUnaryCall(this, context, *request, response);
}

grpc::ServerUnaryReactor* SpqrServiceImpl::Score(grpc::CallbackServerContext* context,
                                                 const v1::ScoreRequest* request,
                                                 v1::ScoreResponse* response) {
  return new ScoreCall(this, context, *request, response);
}

grpc::ServerUnaryReactor* SpqrServiceImpl::Abort(grpc::CallbackServerContext* context,
                                                 const v1::AbortRequest* request,
                                                 v1::AbortResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  grpc::Status status = Admit(context, "Abort");
  if (status.ok() && request->request_id().empty()) {
    status = grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "request_id: must not be empty");
  }
  if (status.ok()) {
    response->set_found(Abort(request->request_id(), CallerKey(context)));
    Logf(LogLevel::kInfo, "Abort %s %s", request->request_id(),
         response->found() ? "cancelled the live request" : "found no live request");
  }
  metrics_->RecordRpc("Abort", GrpcCodeName(status.error_code()));
  reactor->Finish(status);
  return reactor;
}

}  // namespace spqr
