// Prometheus metrics of spqr-server. Every metric's name, type, labels and HELP text is declared
// once, in kMetricTable (metrics.cc), and documented in docs/metrics.md.
//
// Two sources feed them: the server records per-RPC and per-request events (status codes, finish
// reasons, latencies), and an engine collector reads Engine::GetStats() at every scrape (queue
// depth, running requests, KV cache usage, token counters) and the process's resident memory.
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "engine/runtime/engine.h"
#include "engine/runtime/request.h"
#include "prometheus/collectable.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace spqr {

// The methods of spqr.v1.SpqrService, the `method` label of the per-method series exported at 0
// from the start (a new RPC is added here).
inline constexpr const char* kSpqrServiceMethods[] = {
    "Generate", "GenerateUnary", "Chat", "ChatUnary", "Score", "GetModelInfo", "Abort"};

enum class MetricKind { kCounter, kGauge, kHistogram };

// One row of the metric table.
struct MetricSpec {
  absl::string_view name;
  MetricKind kind;
  absl::string_view labels;  // comma-separated label names, "" for none
  absl::string_view help;
};

// Every metric the server exports (the vllm:* names only with metrics.vllm_compatible_names).
const std::vector<MetricSpec>& MetricTable();

// Resident set size of this process from /proc/self/statm, in bytes; 0 when unreadable.
double ProcessResidentMemoryBytes();

// "length", "eos_token", ... (the finished_reason label values).
absl::string_view FinishReasonLabel(FinishReason reason);

class ServerMetrics {
 public:
  explicit ServerMetrics(bool vllm_compatible_names);
  ~ServerMetrics();

  // Where the engine-backed metrics read from; nullptr (the start) reports zeros. The engine must
  // outlive the collection or be reset to nullptr before it is destroyed.
  void SetEngine(const Engine* engine);
  void SetReady(bool ready);

  // An RPC ended with `code` (a gRPC status code name like "OK", "INVALID_ARGUMENT").
  void RecordRpc(absl::string_view method, absl::string_view code);
  // An engine request's final chunk arrived: finish reason, latencies and token counts.
  void RecordRequestFinished(const OutputChunk& final_chunk);
  // `tokens` tokens arrived `seconds` after the previous tokens of the same request.
  void RecordInterTokenLatency(int tokens, double seconds);
  // One engine step ran (EngineOptions::step_observer); thread-safe, never blocks for long.
  void RecordStep(const StepRecord& step);
  // A call was refused with UNAUTHENTICATED; `reason` is "missing" or "invalid".
  void RecordUnauthenticated(absl::string_view method, absl::string_view reason);
  // A call's request was not a valid message (refused with INVALID_ARGUMENT before any other
  // check): spqr_malformed_requests_total{method}. Its series exist at 0 for the spqr.v1 methods
  // (kSpqrServiceMethods), "Health.Check", "Health.Watch" and "ServerReflectionInfo".
  void RecordMalformed(absl::string_view method);
  // Exports spqr_unauthenticated_requests_total{method} at 0 for both reasons, so that rate()
  // sees the series before the first refusal (done for the spqr.v1 methods at construction; the
  // server adds "Health.Check", "Health.Watch" and "ServerReflectionInfo" when it protects them).
  void ExportUnauthenticatedSeries(absl::string_view method);
  // In-flight RPC gauge.
  void RpcStarted();
  void RpcEnded();

  // What the HTTP exposer serves.
  std::shared_ptr<prometheus::Registry> registry() const { return registry_; }
  std::shared_ptr<prometheus::Collectable> engine_collector() const;

 private:
  class EngineCollector;
  // Step kinds, the `kind` label of the step histograms: no decode tokens, no prefill tokens, both.
  static constexpr int kStepKinds = 3;
  static constexpr absl::string_view kStepKindLabels[kStepKinds] = {"prefill", "decode", "mixed"};

  std::shared_ptr<prometheus::Registry> registry_;
  std::shared_ptr<EngineCollector> engine_collector_;
  prometheus::Family<prometheus::Counter>* rpcs_ = nullptr;
  prometheus::Family<prometheus::Counter>* finished_ = nullptr;
  prometheus::Family<prometheus::Counter>* unauthenticated_ = nullptr;
  prometheus::Family<prometheus::Counter>* malformed_ = nullptr;
  prometheus::Histogram* ttft_ = nullptr;
  prometheus::Histogram* itl_ = nullptr;
  prometheus::Histogram* e2e_ = nullptr;
  prometheus::Histogram* queue_time_ = nullptr;
  prometheus::Histogram* request_prompt_tokens_ = nullptr;
  prometheus::Histogram* request_generation_tokens_ = nullptr;
  prometheus::Histogram* step_duration_[kStepKinds] = {};
  prometheus::Histogram* step_tokens_[kStepKinds] = {};
  prometheus::Gauge* ready_ = nullptr;
  prometheus::Gauge* inflight_ = nullptr;
};

}  // namespace spqr
