#include "server/health_service.h"

#include <optional>
#include <utility>

#include "server/call_auth.h"
#include "server/call_parsing.h"
#include "server/log.h"
#include "server/request_parsing.h"

namespace spqr {

using grpc::health::v1::HealthCheckRequest;
using grpc::health::v1::HealthCheckResponse;

// One Watch stream. gRPC calls (StartWrite, Finish) are never made while HealthService::mu_ is
// held: their completions may run inline on the calling thread, and OnDone takes mu_. The
// Prepare* methods decide under this reactor's lock what to do; the caller then does it outside
// every lock. A prepared write or finish keeps the reactor alive until it is started: OnDone
// comes only after Finish, and Finish waits for the write in flight.
class HealthService::WatchReactor final : public grpc::ServerWriteReactor<grpc::ByteBuffer> {
 public:
  explicit WatchReactor(HealthService* owner) : owner_(owner) {}

  // Set before AddWatcher, never after.
  void set_service(std::string service) { service_ = std::move(service); }
  const std::string& service() const { return service_; }

  // Queues `status` (only the newest unwritten status is kept; a status equal to the last one
  // written is not repeated). True: the caller must call StartPreparedWrite().
  bool PrepareWrite(ServingStatus status) {
    absl::MutexLock lock(&mu_);
    if (finish_called_ || finish_status_.has_value()) return false;  // the stream is ending
    if (writing_) {
      pending_ = status;
      return false;
    }
    if (last_written_ == status) return false;
    BeginWriteLocked(status);
    return true;
  }
  void StartPreparedWrite() { StartWrite(&write_buffer_); }

  // Ends the stream with `status` once the write in flight (if any) is done. True: the caller
  // must call FinishPrepared().
  bool PrepareFinish(grpc::Status status) {
    absl::MutexLock lock(&mu_);
    if (finish_called_ || finish_status_.has_value()) return false;
    finish_status_ = std::move(status);
    if (writing_) return false;
    finish_called_ = true;
    return true;
  }
  void FinishPrepared() { Finish(*finish_status_); }

  void OnWriteDone(bool ok) override {
    bool write = false;
    bool finish = false;
    {
      absl::MutexLock lock(&mu_);
      writing_ = false;
      if (!ok && !finish_status_.has_value()) {
        // The stream is broken (client gone); nothing more can be written.
        finish_status_ = grpc::Status(grpc::StatusCode::CANCELLED, "the watch stream broke");
      }
      if (ok && pending_.has_value() && pending_ != last_written_) {
        // Written even when the stream is to end: the last status (NOT_SERVING at shutdown)
        // must reach the client first.
        BeginWriteLocked(*pending_);
        write = true;
      } else if (finish_status_.has_value()) {
        finish = !finish_called_;
        finish_called_ = true;
      }
      pending_.reset();
    }
    if (write) StartPreparedWrite();
    if (finish) FinishPrepared();
  }

  void OnCancel() override {
    if (PrepareFinish(grpc::Status::CANCELLED)) FinishPrepared();
  }

  void OnDone() override {
    owner_->RemoveWatcher(this);
    delete this;
  }

 private:
  void BeginWriteLocked(ServingStatus status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    writing_ = true;
    last_written_ = status;
    HealthCheckResponse response;
    response.set_status(status);
    write_buffer_ = SerializeResponse(response);
  }

  HealthService* const owner_;
  std::string service_;
  absl::Mutex mu_;
  grpc::ByteBuffer write_buffer_;  // not touched while a write is in flight
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  std::optional<ServingStatus> last_written_ ABSL_GUARDED_BY(mu_);
  std::optional<ServingStatus> pending_ ABSL_GUARDED_BY(mu_);
  // Set once the stream is to end; read without the lock only after finish_called_ was set.
  std::optional<grpc::Status> finish_status_;
  bool finish_called_ ABSL_GUARDED_BY(mu_) = false;
};

HealthService::HealthService(const std::vector<std::string>& services, const ApiKeys* required_keys,
                             ServerMetrics* metrics)
    : required_keys_(required_keys), metrics_(metrics) {
  absl::MutexLock lock(&mu_);
  statuses_[""] = HealthCheckResponse::NOT_SERVING;
  for (const std::string& service : services) {
    statuses_[service] = HealthCheckResponse::NOT_SERVING;
  }
}

HealthService::~HealthService() = default;

HealthService::ServingStatus HealthService::StatusOf(const std::string& service) const {
  auto it = statuses_.find(service);
  return it == statuses_.end() ? HealthCheckResponse::SERVICE_UNKNOWN : it->second;
}

void HealthService::SetServing(bool serving) {
  const ServingStatus status =
      serving ? HealthCheckResponse::SERVING : HealthCheckResponse::NOT_SERVING;
  std::vector<WatchReactor*> to_write;
  {
    absl::MutexLock lock(&mu_);
    if (shut_down_) return;
    for (auto& [name, current] : statuses_) current = status;
    for (WatchReactor* watcher : watchers_) {
      if (watcher->PrepareWrite(StatusOf(watcher->service()))) to_write.push_back(watcher);
    }
  }
  for (WatchReactor* watcher : to_write) watcher->StartPreparedWrite();
}

void HealthService::Shutdown() {
  std::vector<WatchReactor*> to_write;
  std::vector<WatchReactor*> to_finish;
  {
    absl::MutexLock lock(&mu_);
    shut_down_ = true;
    for (auto& [name, current] : statuses_) current = HealthCheckResponse::NOT_SERVING;
    for (WatchReactor* watcher : watchers_) {
      if (watcher->PrepareWrite(StatusOf(watcher->service()))) to_write.push_back(watcher);
      if (watcher->PrepareFinish(
              grpc::Status(grpc::StatusCode::UNAVAILABLE, "the server is shutting down"))) {
        to_finish.push_back(watcher);
      }
    }
  }
  for (WatchReactor* watcher : to_write) watcher->StartPreparedWrite();
  for (WatchReactor* watcher : to_finish) watcher->FinishPrepared();
}

int HealthService::watchers() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int>(watchers_.size());
}

bool HealthService::AddWatcher(WatchReactor* watcher) {
  bool write = false;
  {
    absl::MutexLock lock(&mu_);
    if (shut_down_) return false;
    watchers_.insert(watcher);
    write = watcher->PrepareWrite(StatusOf(watcher->service()));
  }
  if (write) watcher->StartPreparedWrite();
  return true;
}

void HealthService::RemoveWatcher(WatchReactor* watcher) {
  absl::MutexLock lock(&mu_);
  watchers_.erase(watcher);
}

grpc::Status HealthService::AdmitCall(grpc::CallbackServerContext* context, const char* method,
                                      const grpc::ByteBuffer& payload,
                                      HealthCheckRequest* request) {
  grpc::Status status = ParseCallRequest(payload, method, metrics_, request);
  if (!status.ok()) {
    // Probes are not logged, refusals of malformed requests are (rare, and worth seeing).
    Logf(LogLevel::kInfo, "%s INVALID_ARGUMENT: %s", method,
         LogSafe(status.error_message(), kLogMessageBytes));
    return status;
  }
  if (required_keys_ != nullptr) {
    return AuthenticateCall(*required_keys_, *context, method, metrics_);
  }
  return grpc::Status::OK;
}

grpc::ServerUnaryReactor* HealthService::Check(grpc::CallbackServerContext* context,
                                               const grpc::ByteBuffer* raw_request,
                                               grpc::ByteBuffer* raw_response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  HealthCheckRequest request;
  if (grpc::Status refusal = AdmitCall(context, "Health.Check", *raw_request, &request);
      !refusal.ok()) {
    reactor->Finish(refusal);
    return reactor;
  }
  ServingStatus status;
  {
    absl::MutexLock lock(&mu_);
    status = StatusOf(request.service());
  }
  if (status == HealthCheckResponse::SERVICE_UNKNOWN) {
    // The name is the client's: escaped and bounded, or a megabyte name would come back whole in
    // the trailers.
    reactor->Finish(
        grpc::Status(grpc::StatusCode::NOT_FOUND,
                     "no health status for service \"" + LogSafe(request.service()) + "\""));
    return reactor;
  }
  HealthCheckResponse response;
  response.set_status(status);
  *raw_response = SerializeResponse(response);
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* HealthService::Watch(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* raw_request) {
  auto* watcher = new WatchReactor(this);
  HealthCheckRequest request;
  grpc::Status refusal = AdmitCall(context, "Health.Watch", *raw_request, &request);
  watcher->set_service(request.service());
  if (refusal.ok() && !AddWatcher(watcher)) {
    refusal = grpc::Status(grpc::StatusCode::UNAVAILABLE, "the server is shutting down");
  }
  if (!refusal.ok() && watcher->PrepareFinish(refusal)) watcher->FinishPrepared();
  return watcher;
}

}  // namespace spqr
