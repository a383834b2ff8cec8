#include "server/engine_call.h"

#include <chrono>

#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "server/grpc_status.h"

namespace spqr {

std::optional<absl::Time> CallDeadline(const grpc::CallbackServerContext* context) {
  const auto deadline = context->deadline();
  if (deadline == std::chrono::system_clock::time_point::max()) return std::nullopt;
  return absl::FromChrono(deadline);
}

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

std::string FinishDetail(const OutputChunk& chunk) {
  return absl::StrFormat("finish=%s prompt=%d completion=%d cached=%d e2e=%.3fs",
                         FinishReasonLabel(chunk.finish_reason), chunk.usage.prompt_tokens,
                         chunk.usage.completion_tokens, chunk.usage.cached_prompt_tokens,
                         absl::ToDoubleSeconds(chunk.timings.e2e));
}

void InterTokenClock::Observe(const OutputChunk& chunk, ServerMetrics* metrics) {
  if (chunk.token_ids.empty()) return;
  const absl::Time now = absl::Now();
  if (last_token_time_.has_value()) {
    metrics->RecordInterTokenLatency(static_cast<int>(chunk.token_ids.size()),
                                     absl::ToDoubleSeconds(now - *last_token_time_));
  }
  last_token_time_ = now;
}

}  // namespace spqr
