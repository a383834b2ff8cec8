// Tests of EngineOptions::step_observer: one record per forward step, with the step's prefill and
// decode token counts, sequences, duration and outcome.
#include <mutex>
#include <vector>

#include "engine/runtime/engine.h"
#include "gtest/gtest.h"
#include "tests/unit/engine_test_util.h"

namespace spqr {
namespace {

using engine_test::EngineTest;
using engine_test::Prompt;
using engine_test::Tokens;

class StepObserverTest : public EngineTest {
 protected:
  EngineOptions ObservedOptions() {
    EngineOptions o = SmallOptions();  // 24 tokens per step
    o.enable_prefix_caching = false;
    o.step_observer = [this](const StepRecord& r) {
      std::lock_guard<std::mutex> lock(mu_);
      records_.push_back(r);
    };
    return o;
  }
  std::vector<StepRecord> Records() {
    std::lock_guard<std::mutex> lock(mu_);
    return records_;
  }
  // The final chunk is emitted inside the step, before its record: once every request has its
  // final chunk, waits until each step counted so far has reported.
  std::vector<StepRecord> RecordsOfAllSteps(const Engine& engine) {
    for (int i = 0; i < 5000; ++i) {
      const std::vector<StepRecord> records = Records();
      if (static_cast<int64_t>(records.size()) >= engine.GetStats().steps_total) return records;
      absl::SleepFor(absl::Milliseconds(1));
    }
    ADD_FAILURE() << "steps without a record";
    return Records();
  }

  std::mutex mu_;
  std::vector<StepRecord> records_;  // guarded by mu_
  bool paused_once_ = false;         // guarded by mu_
};

TEST_F(StepObserverTest, ReportsPrefillChunksThenOneDecodeTokenPerStep) {
  auto engine = MakeEngine(ObservedOptions());
  // 30 prompt tokens take two prefill steps (24 + 6, the second samples the first token); the
  // other 4 tokens take one decode step each.
  ASSERT_TRUE(engine->Submit(Greedy("a", Prompt(30, 1), 5), collector_.For("a")).ok());
  EXPECT_EQ(Tokens(collector_.Wait("a")).size(), 5u);
  ExpectAllBlocksFree(*engine);
  const std::vector<StepRecord> records = RecordsOfAllSteps(*engine);
  ASSERT_EQ(records.size(), 6u);
  EXPECT_EQ(records[0].prefill_tokens, 24);
  EXPECT_EQ(records[1].prefill_tokens, 6);
  for (size_t i = 0; i < records.size(); ++i) {
    const StepRecord& r = records[i];
    EXPECT_EQ(r.sequences, 1) << i;
    EXPECT_TRUE(r.ok) << i;
    EXPECT_GE(r.seconds, 0.0) << i;
    EXPECT_LT(r.seconds, 10.0) << i;
    EXPECT_EQ(r.decode_tokens, i < 2 ? 0 : 1) << i;
    if (i >= 2) {
      EXPECT_EQ(r.prefill_tokens, 0) << i;
    }
  }
  EXPECT_EQ(engine->GetStats().steps_total, 6);
}

TEST_F(StepObserverTest, MixedStepCountsBothKinds) {
  EngineOptions options = ObservedOptions();
  // After a's first decode step the backend pauses, so that b surely arrives while a decodes.
  options.step_observer = [this](const StepRecord& r) {
    std::lock_guard<std::mutex> lock(mu_);
    records_.push_back(r);
    if (r.decode_tokens > 0 && !paused_once_) {
      paused_once_ = true;
      std::lock_guard<std::mutex> control_lock(control_->mu);
      control_->paused = true;
    }
  };
  auto engine = MakeEngine(options);
  ASSERT_TRUE(engine->Submit(Greedy("a", Prompt(8, 1), 20), collector_.For("a")).ok());
  for (int i = 0; i < 5000; ++i) {
    {
      std::lock_guard<std::mutex> lock(control_->mu);
      if (control_->paused) break;
    }
    absl::SleepFor(absl::Milliseconds(1));
  }
  ASSERT_TRUE(engine->Submit(Greedy("b", Prompt(10, 2), 1), collector_.For("b")).ok());
  {
    std::lock_guard<std::mutex> lock(control_->mu);
    control_->paused = false;
  }
  control_->cv.notify_all();
  collector_.Wait("a");
  collector_.Wait("b");
  ExpectAllBlocksFree(*engine);
  int32_t prefill = 0, decode = 0;
  bool mixed = false;
  for (const StepRecord& r : RecordsOfAllSteps(*engine)) {
    prefill += r.prefill_tokens;
    decode += r.decode_tokens;
    if (r.prefill_tokens > 0 && r.decode_tokens > 0) {
      mixed = true;
      EXPECT_EQ(r.sequences, 2);
    }
  }
  EXPECT_EQ(prefill, 8 + 10);
  EXPECT_EQ(decode, 19) << "every token of a but its first is a decode; b only prefills";
  EXPECT_TRUE(mixed) << "b's prefill ran beside a's decodes";
}

TEST_F(StepObserverTest, FailedForwardIsReportedNotOk) {
  auto engine = MakeEngine(ObservedOptions());
  control_->fail = true;
  ASSERT_TRUE(engine->Submit(Greedy("a", Prompt(6, 1), 3), collector_.For("a")).ok());
  EXPECT_EQ(collector_.Wait("a").back().finish_reason, FinishReason::kError);
  const std::vector<StepRecord> records = RecordsOfAllSteps(*engine);
  ASSERT_EQ(records.size(), 1u);
  EXPECT_FALSE(records[0].ok);
  EXPECT_EQ(records[0].prefill_tokens, 6);
}

}  // namespace
}  // namespace spqr
