#include "server/spqr_service.h"

#include <sys/random.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <memory>
#include <optional>
#include <utility>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "server/call_auth.h"
#include "server/log.h"
#include "server/request_parsing.h"

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

// Cancellation state a call shares with the work-pool task that queues its engine requests:
// whichever of OnCancel and the task comes second cancels the engine request.
struct CallFlags {
  std::atomic<bool> cancelled{false};  // OnCancel: the client cancelled or went away
  std::atomic<bool> submitted{false};  // the engine request was queued
};

// Server-side streaming Generate. Engine chunks arrive on the engine thread (Deliver) and are
// queued; whoever finds no write in flight becomes the "pumper" and issues the next write (all
// queued chunks merged into one response), or Finish after the final chunk. Finish is only
// called by the pumper, so the reactor outlives every Deliver that can reach it.
class GenerateStream final : public grpc::ServerWriteReactor<grpc::ByteBuffer> {
 public:
  GenerateStream(SpqrServiceImpl* service, grpc::CallbackServerContext* context,
                 const grpc::ByteBuffer& payload)
      : service_(service), shared_(std::make_shared<Shared>()) {
    service_->CallStarted();
    if (grpc::Status s = service_->AdmitGenerate(context, "Generate", payload, &request_,
                                                 &engine_id_, &client_id_);
        !s.ok()) {
      FinishEarly(s);
      return;
    }
    shape_ = ResponseShapeOf(request_);
    service_->work_pool().Post([this, context] { Start(context); });
  }

  void OnWriteDone(bool ok) override {
    if (!ok && !client_gone_.exchange(true)) {
      // The stream broke (client gone): stop the work; the final chunk ends the call.
      service_->engine()->Cancel(engine_id_);
    }
    Pump();
  }

  void OnCancel() override {
    client_gone_ = true;
    flags_->cancelled = true;
    if (flags_->submitted) service_->engine()->Cancel(engine_id_);
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
        grpc::Status status = FinalStatus(final_chunk, flags_->cancelled, service_->draining(),
                                          aborted_->load(), /*has_finish_reason=*/true);
        if (client_gone_ && status.ok()) {
          status = grpc::Status(grpc::StatusCode::CANCELLED, "the client went away");
        }
        service_->RecordCallEnd("Generate", engine_id_, client_id_, status,
                                FinishDetail(final_chunk));
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

  void FinishEarly(const grpc::Status& status) {
    service_->RecordCallEnd("Generate", engine_id_, client_id_, status, "");
    Finish(status);
  }

  // On the work pool: tokenize, register for Abort, send the id and queue the engine request.
  // Once Submit succeeded the call may end (on the engine thread) at any moment: nothing after it
  // touches `this`.
  void Start(grpc::CallbackServerContext* context) {
    if (flags_->cancelled) {
      FinishEarly(grpc::Status(grpc::StatusCode::CANCELLED, "the request was cancelled"));
      return;
    }
    Engine* engine = service_->engine();
    absl::StatusOr<GenerateRequest> engine_request = MakeEngineRequest(
        request_, engine->model().tokenizer.get(), service_->limits(), engine_id_);
    if (!engine_request.ok()) {
      FinishEarly(ToGrpcStatus(engine_request.status()));
      return;
    }
    engine_request->deadline = CallDeadline(context);
    {
      absl::MutexLock lock(&shared_->mu);
      shared_->stream = this;
    }
    // Registered for Abort before the id goes out; the id goes out at once (before any token) so
    // that the client can Abort a request that is still queued.
    service_->EngineRequestStarted(engine_id_, client_id_, service_->CallerKey(context), aborted_);
    context->AddInitialMetadata(kRequestIdMetadataKey, client_id_);
    StartSendInitialMetadata();
    Logf(LogLevel::kDebug, "Generate %s (client id %s) submitting", engine_id_,
         LogSafe(client_id_));
    std::shared_ptr<Shared> shared = shared_;
    const std::shared_ptr<CallFlags> flags = flags_;
    const std::shared_ptr<std::atomic<bool>> aborted = aborted_;
    const std::string engine_id = engine_id_;
    absl::Status submitted =
        engine->Submit(*std::move(engine_request),
                       [shared](OutputChunk chunk) { Deliver(shared, std::move(chunk)); });
    if (!submitted.ok()) {  // no callback will come: the call is still ours
      service_->EngineRequestDone(engine_id_);
      {
        absl::MutexLock lock(&shared_->mu);
        shared_->stream = nullptr;
      }
      FinishEarly(service_->SubmitFailed(submitted, context));
      return;
    }
    flags->submitted = true;
    // A cancellation or an Abort that came before Submit found no engine request to cancel.
    if (flags->cancelled || aborted->load()) engine->Cancel(engine_id);
  }

  SpqrServiceImpl* const service_;
  std::shared_ptr<Shared> shared_;
  v1::GenerateRequest request_;
  ResponseShape shape_;
  std::string engine_id_;
  std::string client_id_;
  const std::shared_ptr<CallFlags> flags_ = std::make_shared<CallFlags>();
  std::atomic<bool> client_gone_{false};
  const std::shared_ptr<std::atomic<bool>> aborted_ = std::make_shared<std::atomic<bool>>(false);
  v1::GenerateResponse response_;  // the response being built
  grpc::ByteBuffer write_buffer_;  // the one write in flight
};

// GenerateUnary: chunks are accumulated into one response, sent when the final chunk arrives.
class GenerateUnaryCall final : public grpc::ServerUnaryReactor {
 public:
  GenerateUnaryCall(SpqrServiceImpl* service, grpc::CallbackServerContext* context,
                    const grpc::ByteBuffer& payload, grpc::ByteBuffer* response)
      : service_(service), response_(response), shared_(std::make_shared<Shared>()) {
    service_->CallStarted();
    if (grpc::Status s = service_->AdmitGenerate(context, "GenerateUnary", payload, &request_,
                                                 &engine_id_, &client_id_);
        !s.ok()) {
      FinishWith(s);
      return;
    }
    service_->work_pool().Post([this, context] { Start(context); });
  }

  void OnCancel() override {
    flags_->cancelled = true;
    if (flags_->submitted) service_->engine()->Cancel(engine_id_);
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
      call->result_.Swap(&shared->response);
    }
    call->service_->EngineRequestFinished(call->engine_id_, chunk);
    call->FinishWith(FinalStatus(chunk, call->flags_->cancelled, call->service_->draining(),
                                 call->aborted_->load(), /*has_finish_reason=*/true),
                     FinishDetail(chunk));
  }

  // On the work pool: tokenize, register for Abort, send the id and queue the engine request.
  // After a successful Submit nothing touches `this` (the call may already have ended).
  void Start(grpc::CallbackServerContext* context) {
    if (flags_->cancelled) {
      FinishWith(grpc::Status(grpc::StatusCode::CANCELLED, "the request was cancelled"));
      return;
    }
    Engine* engine = service_->engine();
    absl::StatusOr<GenerateRequest> engine_request = MakeEngineRequest(
        request_, engine->model().tokenizer.get(), service_->limits(), engine_id_);
    if (!engine_request.ok()) {
      FinishWith(ToGrpcStatus(engine_request.status()));
      return;
    }
    engine_request->deadline = CallDeadline(context);
    {
      absl::MutexLock lock(&shared_->mu);
      shared_->call = this;
      shared_->shape = ResponseShapeOf(request_);
      shared_->response.set_request_id(client_id_);
    }
    service_->EngineRequestStarted(engine_id_, client_id_, service_->CallerKey(context), aborted_);
    context->AddInitialMetadata(kRequestIdMetadataKey, client_id_);
    StartSendInitialMetadata();
    std::shared_ptr<Shared> shared = shared_;
    const std::shared_ptr<CallFlags> flags = flags_;
    const std::shared_ptr<std::atomic<bool>> aborted = aborted_;
    const std::string engine_id = engine_id_;
    absl::Status submitted =
        engine->Submit(*std::move(engine_request),
                       [shared](OutputChunk chunk) { Deliver(shared, std::move(chunk)); });
    if (!submitted.ok()) {
      service_->EngineRequestDone(engine_id_);
      {
        absl::MutexLock lock(&shared_->mu);
        shared_->call = nullptr;
      }
      FinishWith(service_->SubmitFailed(submitted, context));
      return;
    }
    flags->submitted = true;
    if (flags->cancelled || aborted->load()) engine->Cancel(engine_id);  // raced with Submit
  }

  void FinishWith(const grpc::Status& status, const std::string& detail = "") {
    service_->RecordCallEnd("GenerateUnary", engine_id_, client_id_, status, detail);
    if (status.ok()) *response_ = SerializeResponse(result_);
    Finish(status);
  }

  SpqrServiceImpl* const service_;
  grpc::ByteBuffer* const response_;
  std::shared_ptr<Shared> shared_;
  v1::GenerateRequest request_;
  v1::GenerateResponse result_;
  std::string engine_id_;
  std::string client_id_;
  const std::shared_ptr<std::atomic<bool>> aborted_ = std::make_shared<std::atomic<bool>>(false);
  const std::shared_ptr<CallFlags> flags_ = std::make_shared<CallFlags>();
};

// Score: one engine request per sequence (a text, or each pair), run concurrently; the call ends
// when all have finished.
class ScoreCall final : public grpc::ServerUnaryReactor {
 public:
  ScoreCall(SpqrServiceImpl* service, grpc::CallbackServerContext* context,
            const grpc::ByteBuffer& payload, grpc::ByteBuffer* response)
      : service_(service), response_(response), shared_(std::make_shared<Shared>()) {
    service_->CallStarted();
    if (absl::Status parsed = ParseRequest(payload, &request_); !parsed.ok()) {
      FinishWith(ToGrpcStatus(parsed));
      return;
    }
    if (grpc::Status s = service_->Admit(context, "Score"); !s.ok()) {
      FinishWith(s);
      return;
    }
    base_id_ = service_->NextEngineId();
    result_.set_request_id(request_.request_id().empty() ? base_id_ : request_.request_id());
    // The checks that need no tokenizer (byte bounds, counts) before any work is queued.
    if (absl::Status s = ValidateScoreRequest(request_, service_->limits()); !s.ok()) {
      FinishWith(ToGrpcStatus(s));
      return;
    }
    pairs_ = request_.input_case() == v1::ScoreRequest::kPairs;
    service_->work_pool().Post([this, context] { Start(context); });
  }

  void OnCancel() override {
    shared_->cancelled = true;
    const size_t submitted = shared_->submitted.load();
    for (size_t i = 0; i < submitted; ++i) service_->engine()->Cancel(shared_->engine_ids[i]);
  }

  void OnDone() override {
    service_->CallDone();
    delete this;
  }

 private:
  // State the engine callbacks and the work-pool task share with the call; it outlives the call.
  struct Shared {
    absl::Mutex mu;
    ScoreCall* call ABSL_GUARDED_BY(mu) = nullptr;
    std::vector<ScoreSequence> sequences;
    std::vector<std::string> engine_ids;  // written before the first Submit
    std::vector<std::vector<TokenLogprob>> results ABSL_GUARDED_BY(mu);
    int remaining ABSL_GUARDED_BY(mu) = 0;
    grpc::Status error ABSL_GUARDED_BY(mu);
    std::atomic<size_t> submitted{0};  // engine_ids[0, submitted) were queued
    std::atomic<bool> cancelled{false};
    const std::shared_ptr<std::atomic<bool>> aborted = std::make_shared<std::atomic<bool>>(false);
  };

  // On the work pool: tokenize, then queue one engine request per sequence. Once the first Submit
  // succeeded, the call can only end when every sequence was accounted for (`remaining`), which
  // the loop below does last for the sequences it does not queue.
  void Start(grpc::CallbackServerContext* context) {
    if (shared_->cancelled) {
      FinishWith(grpc::Status(grpc::StatusCode::CANCELLED, "the request was cancelled"));
      return;
    }
    Engine* engine = service_->engine();
    absl::StatusOr<std::vector<ScoreSequence>> sequences =
        MakeScoreSequences(request_, engine->model().tokenizer.get(), service_->limits());
    if (!sequences.ok()) {
      FinishWith(ToGrpcStatus(sequences.status()));
      return;
    }
    const size_t n = sequences->size();
    std::shared_ptr<Shared> shared = shared_;
    {
      absl::MutexLock lock(&shared->mu);
      shared->call = this;
      shared->sequences = *std::move(sequences);
      shared->results.resize(n);
      shared->remaining = static_cast<int>(n);
      for (size_t i = 0; i < n; ++i) {
        shared->engine_ids.push_back(pairs_ ? absl::StrCat(base_id_, ".p", i) : base_id_);
      }
    }
    const std::optional<absl::Time> deadline = CallDeadline(context);
    const int caller_key = service_->CallerKey(context);
    const std::string client_id = result_.request_id();
    SpqrServiceImpl* service = service_;
    size_t submitted = 0;
    grpc::Status submit_error;
    for (size_t i = 0; i < n; ++i) {
      GenerateRequest engine_request =
          MakeScoreEngineRequest(shared->sequences[i], request_.top_logprobs(), request_.priority(),
                                 shared->engine_ids[i]);
      engine_request.deadline = deadline;
      service->EngineRequestStarted(shared->engine_ids[i], client_id, caller_key, shared->aborted);
      absl::Status s = engine->Submit(std::move(engine_request), [shared, i](OutputChunk chunk) {
        Deliver(shared, i, std::move(chunk));
      });
      if (!s.ok()) {
        service->EngineRequestDone(shared->engine_ids[i]);
        submit_error = service->SubmitFailed(s, context);
        break;
      }
      ++submitted;
      shared->submitted.store(submitted);
      // OnCancel or Abort raced with Submit.
      if (shared->cancelled || shared->aborted->load()) engine->Cancel(shared->engine_ids[i]);
    }
    if (submit_error.ok()) return;
    // Some sequence could not be queued: stop the others and fail the call once they ended.
    for (size_t i = 0; i < submitted; ++i) engine->Cancel(shared->engine_ids[i]);
    ScoreCall* finish_now = nullptr;
    {
      absl::MutexLock lock(&shared->mu);
      shared->error = submit_error;
      shared->remaining -= static_cast<int>(n - submitted);
      if (shared->remaining == 0) {
        finish_now = shared->call;
        shared->call = nullptr;
      }
    }
    if (finish_now != nullptr) finish_now->FinishWith(submit_error);
  }

  static void Deliver(const std::shared_ptr<Shared>& shared, size_t index, OutputChunk chunk) {
    ScoreCall* call = nullptr;
    grpc::Status error;
    {
      absl::MutexLock lock(&shared->mu);
      if (shared->call == nullptr) return;
      if (!chunk.prompt_logprobs.empty()) shared->results[index] = std::move(chunk.prompt_logprobs);
      if (!chunk.finished) return;
      ScoreCall* self = shared->call;
      self->service_->EngineRequestFinished(shared->engine_ids[index], chunk);
      grpc::Status status = FinalStatus(chunk, shared->cancelled, self->service_->draining(),
                                        shared->aborted->load(), /*has_finish_reason=*/false);
      if (!status.ok() && shared->error.ok()) {
        shared->error = status;
        // One failed: the others are useless now.
        const size_t submitted = shared->submitted.load();
        for (size_t i = 0; i < submitted; ++i) {
          if (i != index) self->service_->engine()->Cancel(shared->engine_ids[i]);
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
        v1::PairScore* pair = result_.add_pair_scores();
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
          FillTokenLogprob(logprobs[j], tokenizer, result_.add_token_logprobs());
        }
        result_.set_sum_logprob(sum);
        result_.set_num_scored_tokens(static_cast<int32_t>(logprobs.size() - first));
      }
    }
    result_.mutable_usage()->set_prompt_tokens(prompt_tokens);
    return grpc::Status::OK;
  }

  void FinishWith(const grpc::Status& status) {
    service_->RecordCallEnd(
        "Score", base_id_, result_.request_id(), status,
        status.ok() ? absl::StrFormat("sequences=%d prompt=%d", shared_->engine_ids.size(),
                                      result_.usage().prompt_tokens())
                    : "");
    if (status.ok()) *response_ = SerializeResponse(result_);
    Finish(status);
  }

  SpqrServiceImpl* const service_;
  grpc::ByteBuffer* const response_;
  std::shared_ptr<Shared> shared_;
  v1::ScoreRequest request_;
  v1::ScoreResponse result_;
  std::string base_id_;
  bool pairs_ = false;
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
    : config_(config), metrics_(metrics), work_pool_(config.server.tokenizer_threads) {}

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
  // The client id and the status message (which may quote the request) are client bytes.
  // A request refused before it got an id (unparsable, unauthenticated) logs "-".
  const std::string server_id = engine_id.empty() ? "-" : engine_id;
  const std::string id = client_id.empty() || client_id == engine_id
                             ? server_id
                             : absl::StrCat(server_id, " (client ", LogSafe(client_id), ")");
  if (status.ok()) {
    Logf(LogLevel::kInfo, "%s %s OK %s", method, id, detail);
  } else {
    Logf(LogLevel::kInfo, "%s %s %s: %s %s", method, id, GrpcCodeName(status.error_code()),
         LogSafe(status.error_message(), kLogMessageBytes), detail);
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

std::string RandomRequestId() {
  uint8_t bytes[16];
  size_t filled = 0;
  while (filled < sizeof(bytes)) {
    const ssize_t got = getrandom(bytes + filled, sizeof(bytes) - filled, 0);
    if (got > 0) {
      filled += static_cast<size_t>(got);
    } else if (errno != EINTR) {
      // getrandom cannot fail on Linux >= 3.17 once the pool is initialized (it blocks until
      // then); an unguessable id is a security property, so never fall back to a weak one.
      std::perror("getrandom");
      std::abort();
    }
  }
  return absl::BytesToHexString(
      absl::string_view(reinterpret_cast<const char*>(bytes), sizeof(bytes)));
}

std::string SpqrServiceImpl::NextEngineId() { return RandomRequestId(); }

grpc::Status SpqrServiceImpl::AdmitGenerate(const grpc::CallbackServerContext* context,
                                            const char* method, const grpc::ByteBuffer& payload,
                                            v1::GenerateRequest* request, std::string* engine_id,
                                            std::string* client_id) {
  if (absl::Status parsed = ParseRequest(payload, request); !parsed.ok()) {
    return ToGrpcStatus(parsed);
  }
  if (grpc::Status s = Admit(context, method); !s.ok()) return s;
  *engine_id = NextEngineId();
  *client_id = request->request_id().empty() ? *engine_id : request->request_id();
  return ToGrpcStatus(ValidateGenerateRequest(*request, limits()));
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

grpc::ServerWriteReactor<grpc::ByteBuffer>* SpqrServiceImpl::Generate(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request) {
  return new GenerateStream(this, context, *request);
}

grpc::ServerUnaryReactor* SpqrServiceImpl::GenerateUnary(grpc::CallbackServerContext* context,
                                                         const grpc::ByteBuffer* request,
                                                         grpc::ByteBuffer* response) {
  return new GenerateUnaryCall(this, context, *request, response);
}

grpc::ServerUnaryReactor* SpqrServiceImpl::Score(grpc::CallbackServerContext* context,
                                                 const grpc::ByteBuffer* request,
                                                 grpc::ByteBuffer* response) {
  return new ScoreCall(this, context, *request, response);
}

grpc::ServerUnaryReactor* SpqrServiceImpl::Abort(grpc::CallbackServerContext* context,
                                                 const grpc::ByteBuffer* raw_request,
                                                 grpc::ByteBuffer* raw_response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  v1::AbortRequest request;
  grpc::Status status = ToGrpcStatus(ParseRequest(*raw_request, &request));
  if (status.ok()) status = Admit(context, "Abort");
  if (status.ok() && request.request_id().empty()) {
    status = grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "request_id: must not be empty");
  }
  if (status.ok()) {
    v1::AbortResponse response;
    response.set_found(Abort(request.request_id(), CallerKey(context)));
    Logf(LogLevel::kInfo, "Abort %s %s", LogSafe(request.request_id()),
         response.found() ? "cancelled the live request" : "found no live request");
    *raw_response = SerializeResponse(response);
  } else {
    Logf(LogLevel::kInfo, "Abort %s: %s", GrpcCodeName(status.error_code()),
         LogSafe(status.error_message(), kLogMessageBytes));
  }
  metrics_->RecordRpc("Abort", GrpcCodeName(status.error_code()));
  reactor->Finish(status);
  return reactor;
}

}  // namespace spqr
