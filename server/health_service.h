// spqr-server's grpc.health.v1.Health (Check and Watch), replacing gRPC's default health service
// so that it can require an API key (server.auth.exempt_health: false) and so that it starts
// NOT_SERVING: the default one answers SERVING from the moment the port is bound.
//
// Statuses exist for "" (the whole server) and every service named at construction; other names
// are NOT_FOUND for Check and SERVICE_UNKNOWN for Watch (as the health protocol specifies).
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

class HealthService final : public grpc::health::v1::Health::CallbackService {
 public:
  using ServingStatus = grpc::health::v1::HealthCheckResponse::ServingStatus;

  // `required_keys`: null (or disabled keys) lets every caller in; else calls need one of the
  // keys, refusals are counted through `metrics` (labels "Health.Check", "Health.Watch").
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

  grpc::ServerUnaryReactor* Check(grpc::CallbackServerContext* context,
                                  const grpc::health::v1::HealthCheckRequest* request,
                                  grpc::health::v1::HealthCheckResponse* response) override;
  grpc::ServerWriteReactor<grpc::health::v1::HealthCheckResponse>* Watch(
      grpc::CallbackServerContext* context,
      const grpc::health::v1::HealthCheckRequest* request) override;

  // Open Watch streams (tests).
  int watchers() const;

 private:
  class WatchReactor;
  friend class WatchReactor;

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
