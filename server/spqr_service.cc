// SpqrServiceImpl's shared state: lifecycle (SetEngine, drain), admission (API keys, accepting),
// the bookkeeping of in-flight calls and live engine requests (drain, CancelAll, Abort), and the
// request log. Each RPC family is in a file of its own: spqr_service_generate.cc,
// spqr_service_chat.cc, spqr_service_score.cc, spqr_service_model_info.cc, spqr_service_abort.cc.
#include "server/spqr_service.h"

#include <sys/random.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <utility>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "server/call_auth.h"
#include "server/call_parsing.h"
#include "server/log.h"

namespace spqr {

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
  // The in-flight gauge drops here, before the final status is handed to gRPC, not in OnDone:
  // gRPC runs OnDone some time after the client has the status, and by then the client may have
  // started its next call on the freed HTTP/2 stream, so the gauge briefly showed one call more
  // than the connection's stream limit allows.
  metrics_->RpcEnded();
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

grpc::Status SpqrServiceImpl::ParseAndAdmit(const grpc::CallbackServerContext* context,
                                            const char* method, const grpc::ByteBuffer& payload,
                                            google::protobuf::Message* request) {
  if (grpc::Status s = ParseCallRequest(payload, method, metrics_, request); !s.ok()) return s;
  return Admit(context, method);
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
  if (grpc::Status s = ParseAndAdmit(context, method, payload, request); !s.ok()) return s;
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

}  // namespace spqr
