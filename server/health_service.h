// spqr-server's grpc.health.v1.Health (Check and Watch), replacing gRPC's default health service
// so that it can require an API key (server.auth.exempt_health: false) and so that it starts
// NOT_SERVING: the default one answers SERVING from the moment the port is bound.
//
// Statuses exist for "" (the whole server) and every service named at construction; other names
// are NOT_FOUND for Check and SERVICE_UNKNOWN for Watch (as the health protocol specifies).
//
// Both methods are registered raw and parse their request themselves (call_parsing.h): bytes that
// are not a HealthCheckRequest end with INVALID_ARGUMENT naming the problem, counted in
// spqr_malformed_requests_total, instead of gRPC's bare UNIMPLEMENTED.
#pragma once

#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "server/api_keys.h"
#include "server/metrics.h"

namespace spqr {

// Check and Watch as raw callback methods (grpc::ByteBuffer in and out).
using RawHealthService = grpc::health::v1::Health::WithRawCallbackMethod_Check<
    grpc::health::v1::Health::WithRawCallbackMethod_Watch<grpc::health::v1::Health::Service>>;

class HealthService final : public RawHealthService {
 public:
  using ServingStatus = grpc::health::v1::HealthCheckResponse::ServingStatus;

  // `required_keys`: null (or disabled keys) lets every caller in; else calls need one of the
  // keys, refusals are counted through `metrics` (labels "Health.Check", "Health.Watch"), as are
  // malformed requests.
  // Both must outlive this service. Every status starts NOT_SERVING.
  HealthService(const std::vector<std::string>& services, const ApiKeys* required_keys,
                ServerMetrics* metrics);
  ~HealthService() override;

  // Sets "" and every named service to SERVING or NOT_SERVING; open Watch streams get the change.
  void SetServing(bool serving);

  // NOT_SERVING everywhere, and every open Watch stream ends (UNAVAILABLE) once that update is
  // written, so that the gRPC server's Shutdown does not wait for watchers. New Watch calls end
  // at once. Call before grpc::Server::Shutdown.
  void Shutdown();

  // Requests are HealthCheckRequest messages in wire format, responses HealthCheckResponse.
  grpc::ServerUnaryReactor* Check(grpc::CallbackServerContext* context,
                                  const grpc::ByteBuffer* request,
                                  grpc::ByteBuffer* response) override;
  grpc::ServerWriteReactor<grpc::ByteBuffer>* Watch(grpc::CallbackServerContext* context,
                                                    const grpc::ByteBuffer* request) override;

  // Open Watch streams (tests).
  int watchers() const;

 private:
  class WatchReactor;
  friend class WatchReactor;

  // Parse (counted when malformed), then the API key: the status a call must end with if not OK.
  grpc::Status AdmitCall(grpc::CallbackServerContext* context, const char* method,
                         const grpc::ByteBuffer& payload,
                         grpc::health::v1::HealthCheckRequest* request);
  // The status of `service` (SERVICE_UNKNOWN when it has none).
  ServingStatus StatusOf(const std::string& service) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Registers a new watcher and sends it the current status; false after Shutdown.
  bool AddWatcher(WatchReactor* watcher) ABSL_LOCKS_EXCLUDED(mu_);
  void RemoveWatcher(WatchReactor* watcher) ABSL_LOCKS_EXCLUDED(mu_);

  const ApiKeys* const required_keys_;
  ServerMetrics* const metrics_;
  mutable absl::Mutex mu_;
  std::map<std::string, ServingStatus> statuses_ ABSL_GUARDED_BY(mu_);
  std::set<WatchReactor*> watchers_ ABSL_GUARDED_BY(mu_);
  bool shut_down_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace spqr
