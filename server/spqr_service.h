// spqr.v1.SpqrService on gRPC's callback API: one reactor per call, engine chunks queued under a
// mutex and written one at a time, client cancellation and deadlines forwarded to the engine.
//
// Lifecycle: the service is registered before the model is loaded (every RPC answers UNAVAILABLE
// until SetEngine), and on shutdown StartDraining refuses new calls while in-flight ones finish.
//
// Threads: every method is registered raw (grpc::ByteBuffer in and out) and parses its request
// itself (request_parsing.h), so an unparsable request ends with INVALID_ARGUMENT naming the
// problem and is counted, instead of gRPC's bare UNIMPLEMENTED. The gRPC callback thread only
// parses and validates (bounded work: the message size and byte bounds are checked first);
// tokenizing and queueing run on the service's WorkPool (server.tokenizer_threads).
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "config/server_config.h"
#include "engine/runtime/engine.h"
#include "server/api_keys.h"
#include "server/grpc_status.h"
#include "server/metrics.h"
#include "server/request_validation.h"
#include "server/retry_pushback.h"
#include "server/work_pool.h"
#include "spqr/v1/spqr.grpc.pb.h"

namespace spqr {

// Initial metadata of Generate, GenerateUnary, Chat and ChatUnary: the request's id (the client's
// or the one the server assigned), sent before the first token so that a client can Abort a request
// still queued.
inline constexpr char kRequestIdMetadataKey[] = "spqr-request-id";

// The limits requests are checked against, from the config and the loaded engine.
RequestLimits ResolveRequestLimits(const ServerConfig& config, const Engine& engine);

// Every method of spqr.v1.SpqrService as a raw callback method.
using RawSpqrService = v1::SpqrService::WithRawCallbackMethod_Generate<
    v1::SpqrService::WithRawCallbackMethod_GenerateUnary<
        v1::SpqrService::WithRawCallbackMethod_Chat<
            v1::SpqrService::WithRawCallbackMethod_ChatUnary<
                v1::SpqrService::WithRawCallbackMethod_Score<
                    v1::SpqrService::WithRawCallbackMethod_GetModelInfo<
                        v1::SpqrService::WithRawCallbackMethod_Abort<
                            v1::SpqrService::Service>>>>>>>;

// 32 lowercase hex digits: 128 bits from the kernel's CSPRNG (getrandom), the id of a request the
// client did not name. Unguessable, so that without API keys only whoever received an id can
// Abort its request.
std::string RandomRequestId();

class SpqrServiceImpl final : public RawSpqrService {
 public:
  SpqrServiceImpl(const ServerConfig& config, ServerMetrics* metrics);
  ~SpqrServiceImpl() override;

  // Starts serving `engine` (loaded and warmed up). It must outlive every call.
  void SetEngine(Engine* engine);
  // From now on new calls fail with UNAVAILABLE; in-flight calls continue.
  void StartDraining();
  // Waits until no call is in flight, at most `timeout`. Returns whether none is left.
  bool WaitForIdle(absl::Duration timeout);
  // Cancels the engine requests of every in-flight call; they end with UNAVAILABLE.
  void CancelAll();
  int64_t inflight_calls();

  // Requests are spqr.v1 messages in wire format (GenerateRequest, ScoreRequest, ...), responses
  // likewise; see proto/spqr/v1/spqr.proto.
  grpc::ServerWriteReactor<grpc::ByteBuffer>* Generate(grpc::CallbackServerContext* context,
                                                       const grpc::ByteBuffer* request) override;
  grpc::ServerUnaryReactor* GenerateUnary(grpc::CallbackServerContext* context,
                                          const grpc::ByteBuffer* request,
                                          grpc::ByteBuffer* response) override;
  grpc::ServerWriteReactor<grpc::ByteBuffer>* Chat(grpc::CallbackServerContext* context,
                                                   const grpc::ByteBuffer* request) override;
  grpc::ServerUnaryReactor* ChatUnary(grpc::CallbackServerContext* context,
                                      const grpc::ByteBuffer* request,
                                      grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* Score(grpc::CallbackServerContext* context,
                                  const grpc::ByteBuffer* request,
                                  grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* GetModelInfo(grpc::CallbackServerContext* context,
                                         const grpc::ByteBuffer* request,
                                         grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* Abort(grpc::CallbackServerContext* context,
                                  const grpc::ByteBuffer* request,
                                  grpc::ByteBuffer* response) override;

  // Cancels every live engine request whose client-visible id is `client_id` and whose call
  // presented the API key `caller_key` (see CallerKey), and marks it aborted. Returns whether
  // there was one. With API keys a caller can only abort requests made with its own key; without
  // them, whoever knows the id (server-assigned ids are RandomRequestId()s).
  bool Abort(const std::string& client_id, int caller_key);
  // The index of the API key the call presented; -1 without API keys (everyone is one owner).
  int CallerKey(const grpc::CallbackServerContext* context) const;

  // Used by the call reactors (spqr_service_*.cc, generate_call.h).
  Engine* engine() const { return engine_.load(); }
  const RequestLimits& limits() const { return limits_; }
  ServerMetrics* metrics() const { return metrics_; }
  // Where calls tokenize and queue their requests.
  WorkPool& work_pool() { return work_pool_; }
  bool draining() const { return draining_.load(); }
  // UNAVAILABLE while not loaded or draining, else OK.
  absl::Status CheckAccepting() const;
  // Keys that calls must present (none: every call is allowed). Set before serving.
  void SetApiKeys(ApiKeys keys);
  // UNAUTHENTICATED (counted in spqr_unauthenticated_requests_total) when API keys are configured
  // and the call's "authorization" metadata holds none of them, else OK.
  grpc::Status Authenticate(const grpc::CallbackServerContext* context, const char* method);
  // Authenticate, then CheckAccepting: the first check of every call.
  grpc::Status Admit(const grpc::CallbackServerContext* context, const char* method);
  // The first steps of every call, on the gRPC thread: parse the payload into `request` (a
  // malformed one is INVALID_ARGUMENT, counted in spqr_malformed_requests_total), then Admit.
  grpc::Status ParseAndAdmit(const grpc::CallbackServerContext* context, const char* method,
                             const grpc::ByteBuffer& payload, google::protobuf::Message* request);
  // A fresh engine request id (RandomRequestId()).
  std::string NextEngineId();
  // The admission shared by Generate and GenerateUnary, on the gRPC thread: ParseAndAdmit, a
  // fresh engine id, the client-visible id (the request's, else the engine id) and the
  // checks that need no tokenizer (the prompt's byte bound among them). A non-OK status is what
  // the call must finish with. MakeEngineRequest (tokenizing) comes later, on the work pool.
  grpc::Status AdmitGenerate(const grpc::CallbackServerContext* context, const char* method,
                             const grpc::ByteBuffer& payload, v1::GenerateRequest* request,
                             std::string* engine_id, std::string* client_id);
  // In-flight bookkeeping: calls (for drain; CallStarted also raises the in-flight gauge, which
  // RecordCallEnd lowers) and live engine request ids (for CancelAll).
  void CallStarted();
  void CallDone();
  // `client_id` and `owner_key` are what Abort matches; `aborted` is set when an Abort call cancels
  // the request.
  void EngineRequestStarted(const std::string& engine_id, const std::string& client_id,
                            int owner_key, std::shared_ptr<std::atomic<bool>> aborted);
  // Submit failed: forget the request.
  void EngineRequestDone(const std::string& engine_id);
  // The final chunk arrived: metrics, the drain-rate estimate, and forget the request.
  void EngineRequestFinished(const std::string& engine_id, const OutputChunk& final_chunk);
  // The RPC status for a failed Engine::Submit. RESOURCE_EXHAUSTED gets a message naming the
  // queue bound that was hit and the trailing metadata grpc-retry-pushback-ms (when the queue
  // would have room at the recent completion rate).
  grpc::Status SubmitFailed(const absl::Status& status, grpc::CallbackServerContext* context);
  // A call ended (once per call started, right before its final status goes to gRPC): the
  // in-flight gauge, the spqr_requests_total metric and one log line with both ids.
  void RecordCallEnd(const char* method, const std::string& engine_id, const std::string& client_id,
                     const grpc::Status& status, const std::string& detail);

 private:
  const ServerConfig config_;
  ServerMetrics* const metrics_;
  std::atomic<Engine*> engine_{nullptr};
  RequestLimits limits_;  // written once in SetEngine, before engine_ is published
  std::atomic<bool> draining_{false};

  DrainRateEstimator drain_rate_;
  ApiKeys api_keys_;  // written before serving

  struct LiveRequest {
    std::string client_id;
    int owner_key = -1;  // CallerKey of the call that made it
    std::shared_ptr<std::atomic<bool>> aborted;
  };
  absl::Mutex mu_;
  int64_t inflight_calls_ ABSL_GUARDED_BY(mu_) = 0;
  // Keyed by engine id (unique); client ids may repeat.
  std::map<std::string, LiveRequest> live_engine_ids_ ABSL_GUARDED_BY(mu_);
  // Last member: destroyed (its queued tasks run, its threads joined) before everything above.
  WorkPool work_pool_;
};

}  // namespace spqr
