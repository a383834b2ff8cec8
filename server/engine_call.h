// What every spqr.v1 call that runs engine requests shares (Generate, GenerateUnary, Chat,
// ChatUnary, Score): the engine deadline from the gRPC deadline, the RPC status of a finished
// engine request, the request log's detail, the cancellation flags the call shares with its
// work-pool task, and the inter-token latency clock.
#pragma once

#include <atomic>
#include <optional>
#include <string>

#include "absl/time/time.h"
#include "engine/runtime/request.h"
#include "grpcpp/server_context.h"
#include "grpcpp/support/status.h"
#include "server/metrics.h"

namespace spqr {

// The engine deadline of a call: the gRPC deadline, if the client set one.
std::optional<absl::Time> CallDeadline(const grpc::CallbackServerContext* context);

// The RPC status of a finished engine request (OK for normal finishes). `client_cancelled`: the
// client cancelled or went away; `draining`: the server is shutting down; `aborted`: an Abort
// call cancelled the request, after which a call that reports finish reasons
// (`has_finish_reason`, a generation) ends normally with FINISH_REASON_CANCELLED.
grpc::Status FinalStatus(const OutputChunk& chunk, bool client_cancelled, bool draining,
                         bool aborted, bool has_finish_reason);

// "finish=length prompt=12 completion=30 cached=0 e2e=0.412s" for the request log.
std::string FinishDetail(const OutputChunk& chunk);

// Cancellation state a call shares with the work-pool task that queues its engine requests:
// whichever of OnCancel and the task comes second cancels the engine request.
struct CallFlags {
  std::atomic<bool> cancelled{false};  // OnCancel: the client cancelled or went away
  std::atomic<bool> submitted{false};  // the engine request was queued
};

// Feeds spqr_inter_token_latency_seconds from the chunks of one engine request. Used on the
// engine thread only (where the chunks arrive).
class InterTokenClock {
 public:
  // Records the time since the previous chunk with tokens (none for the first).
  void Observe(const OutputChunk& chunk, ServerMetrics* metrics);

 private:
  std::optional<absl::Time> last_token_time_;
};

}  // namespace spqr
