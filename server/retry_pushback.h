// Retry hints for RESOURCE_EXHAUSTED answers: how long until the engine's waiting queue would have
// room, from the rate at which engine requests have recently been finishing.
//
// gRPC clients with a retry policy honour the trailing metadata key grpc-retry-pushback-ms (the
// value is the delay before the next attempt, in milliseconds); other clients can read it too.
#pragma once

#include <cstdint>
#include <deque>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace spqr {

// The trailing metadata key gRPC's retry machinery reads.
inline constexpr char kRetryPushbackKey[] = "grpc-retry-pushback-ms";

// Sliding-window estimate of the engine's completion rate. Thread-safe.
class DrainRateEstimator {
 public:
  struct Options {
    absl::Duration window = absl::Seconds(30);  // completions older than this are forgotten
    int max_samples = 1024;                     // and at most this many are kept
    int64_t min_pushback_ms = 10;
    int64_t max_pushback_ms = 60000;
    // With fewer than two completions in the window there is no rate: this is the hint.
    int64_t unknown_rate_pushback_ms = 1000;
  };

  DrainRateEstimator() : DrainRateEstimator(Options()) {}
  explicit DrainRateEstimator(const Options& options) : options_(options) {}

  // An engine request finished at `now` (any reason: each one frees a place in the batch, which
  // lets one waiting request leave the queue).
  void RecordCompletion(absl::Time now);

  // Completions per second over the window ending at `now`, 0 when fewer than two are known.
  double CompletionsPerSecond(absl::Time now);

  // Milliseconds until `completions_needed` (>= 1) more requests would have finished at the
  // recent rate, clamped to [min_pushback_ms, max_pushback_ms].
  int64_t PushbackMs(int64_t completions_needed, absl::Time now);

 private:
  void DropOld(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const Options options_;
  absl::Mutex mu_;
  std::deque<absl::Time> completions_ ABSL_GUARDED_BY(mu_);
};

}  // namespace spqr
