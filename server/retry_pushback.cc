#include "server/retry_pushback.h"

#include <algorithm>
#include <cmath>

namespace spqr {

void DrainRateEstimator::RecordCompletion(absl::Time now) {
  absl::MutexLock lock(&mu_);
  completions_.push_back(now);
  DropOld(now);
}

void DrainRateEstimator::DropOld(absl::Time now) {
  while (!completions_.empty() && (now - completions_.front() > options_.window ||
                                   static_cast<int>(completions_.size()) > options_.max_samples)) {
    completions_.pop_front();
  }
}

double DrainRateEstimator::CompletionsPerSecond(absl::Time now) {
  absl::MutexLock lock(&mu_);
  DropOld(now);
  if (completions_.size() < 2) return 0.0;
  // n completions spread over [oldest, now]: n - 1 intervals end at the newest one, but the time
  // since the newest also counts (a stalled engine must look slow), so use n over the full span.
  const double span = absl::ToDoubleSeconds(now - completions_.front());
  if (span <= 0) return 0.0;
  return static_cast<double>(completions_.size()) / span;
}

int64_t DrainRateEstimator::PushbackMs(int64_t completions_needed, absl::Time now) {
  const double rate = CompletionsPerSecond(now);
  if (rate <= 0) return options_.unknown_rate_pushback_ms;
  const double ms =
      std::ceil(static_cast<double>(std::max<int64_t>(completions_needed, 1)) / rate * 1000.0);
  return std::clamp(static_cast<int64_t>(std::min(ms, 1e12)), options_.min_pushback_ms,
                    options_.max_pushback_ms);
}

}  // namespace spqr
