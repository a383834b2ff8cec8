// Tests of server/retry_pushback: the retry hint follows the recent completion rate.
#include "gtest/gtest.h"
#include "server/retry_pushback.h"

namespace spqr {
namespace {

const absl::Time kStart = absl::FromUnixSeconds(1000000);

TEST(DrainRateEstimatorTest, UnknownRateGivesTheDefaultHint) {
  DrainRateEstimator estimator;
  EXPECT_EQ(estimator.CompletionsPerSecond(kStart), 0.0);
  EXPECT_EQ(estimator.PushbackMs(1, kStart), 1000);
  estimator.RecordCompletion(kStart);
  EXPECT_EQ(estimator.PushbackMs(1, kStart), 1000);
}

TEST(DrainRateEstimatorTest, HintIsTheTimeForTheNeededCompletions) {
  DrainRateEstimator estimator;
  // 10 completions per second for 2 s.
  for (int i = 0; i < 20; ++i) estimator.RecordCompletion(kStart + absl::Milliseconds(100 * i));
  const absl::Time now = kStart + absl::Milliseconds(2000);
  EXPECT_NEAR(estimator.CompletionsPerSecond(now), 10.0, 1e-9);
  EXPECT_EQ(estimator.PushbackMs(1, now), 100);
  EXPECT_EQ(estimator.PushbackMs(5, now), 500);
  // At least one completion is always needed.
  EXPECT_EQ(estimator.PushbackMs(0, now), 100);
}

TEST(DrainRateEstimatorTest, StalledEngineLooksSlowAndOldCompletionsAreForgotten) {
  DrainRateEstimator::Options options;
  options.window = absl::Seconds(10);
  DrainRateEstimator estimator(options);
  for (int i = 0; i < 10; ++i) estimator.RecordCompletion(kStart + absl::Milliseconds(10 * i));
  // 10 completions in 0.1 s, then silence: 9.9 s later the rate is 10 / 10 s.
  EXPECT_NEAR(estimator.CompletionsPerSecond(kStart + absl::Seconds(10)), 1.0, 1e-9);
  // Past the window nothing is left.
  EXPECT_EQ(estimator.CompletionsPerSecond(kStart + absl::Seconds(30)), 0.0);
}

TEST(DrainRateEstimatorTest, HintIsClamped) {
  DrainRateEstimator::Options options;
  options.min_pushback_ms = 50;
  options.max_pushback_ms = 2000;
  DrainRateEstimator estimator(options);
  for (int i = 0; i < 1000; ++i) estimator.RecordCompletion(kStart + absl::Microseconds(100 * i));
  const absl::Time now = kStart + absl::Milliseconds(100);
  EXPECT_EQ(estimator.PushbackMs(1, now), 50);  // 10000/s would say 0.1 ms
  EXPECT_EQ(estimator.PushbackMs(1000000, now), 2000);
}

}  // namespace
}  // namespace spqr
