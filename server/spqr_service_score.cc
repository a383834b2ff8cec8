// SpqrServiceImpl::Score: one engine request per text or continuation pair, their prompt
// logprobs summed into one response.
#include <atomic>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "server/engine_call.h"
#include "server/grpc_status.h"
#include "server/request_parsing.h"
#include "server/request_validation.h"
#include "server/spqr_service.h"

namespace spqr {
namespace {

// Score: one engine request per sequence (a text, or each pair), run concurrently; the call ends
// when all have finished.
class ScoreCall final : public grpc::ServerUnaryReactor {
 public:
  ScoreCall(SpqrServiceImpl* service, grpc::CallbackServerContext* context,
            const grpc::ByteBuffer& payload, grpc::ByteBuffer* response)
      : service_(service), response_(response), shared_(std::make_shared<Shared>()) {
    service_->CallStarted();
    if (grpc::Status s = service_->ParseAndAdmit(context, "Score", payload, &request_); !s.ok()) {
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

grpc::ServerUnaryReactor* SpqrServiceImpl::Score(grpc::CallbackServerContext* context,
                                                 const grpc::ByteBuffer* request,
                                                 grpc::ByteBuffer* response) {
  return new ScoreCall(this, context, *request, response);
}

}  // namespace spqr
