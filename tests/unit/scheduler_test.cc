#include "engine/runtime/scheduler.h"

#include <algorithm>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "gtest/gtest.h"

namespace spqr {
namespace {

// A miniature engine around the pure Schedule(): it applies each plan (reserving blocks for
// admissions, advancing computed tokens, "generating" one token when a sequence has computed all
// it knows, finishing at max_new_tokens and returning its blocks), so a test can state the
// expected state after every step.
class Simulation {
 public:
  Simulation(int32_t total_blocks, SchedulerConfig config)
      : free_blocks_(total_blocks), total_blocks_(total_blocks), config_(config) {}

  void Submit(const std::string& name, int32_t prompt, int32_t max_new, int32_t priority = 0) {
    const int64_t id = static_cast<int64_t>(names_.size());
    names_.push_back(name);
    waiting_.push_back({id, priority, next_arrival_++, prompt, max_new});
  }

  // Runs one step; returns "name:tokens" for each scheduled sequence in plan order.
  std::vector<std::string> Step() {
    const SchedulePlan plan = Schedule(waiting_, RunningView(), free_blocks_, config_);
    std::vector<std::string> out;
    EXPECT_LE(plan.num_batched_tokens, config_.max_batched_tokens);
    for (const ScheduledSequence& s : plan.scheduled) {
      out.push_back(names_[s.id] + ":" + std::to_string(s.num_tokens));
      if (s.newly_admitted) {
        auto it = std::find_if(waiting_.begin(), waiting_.end(),
                               [&](const WaitingSequence& w) { return w.id == s.id; });
        EXPECT_NE(it, waiting_.end());
        free_blocks_ -= s.blocks_to_reserve;
        EXPECT_GE(free_blocks_, 0) << "admission over-committed the KV cache";
        running_[s.id] = {*it, 0, it->prompt_tokens, 0, s.blocks_to_reserve};
        waiting_.erase(it);
      }
      State& r = running_[s.id];
      r.computed += s.num_tokens;
      EXPECT_LE(r.computed, r.known);
      if (r.computed == r.known) {  // logits of the last known token: one new token
        ++r.generated;
        ++r.known;
        if (r.generated == r.req.max_new_tokens) {
          free_blocks_ += r.blocks;
          running_.erase(s.id);
        }
      }
    }
    EXPECT_EQ(static_cast<int>(running_.size()) <= config_.max_running_requests, true);
    return out;
  }

  std::vector<std::string> Waiting() const {
    std::vector<std::string> names;
    for (const WaitingSequence& w : waiting_) names.push_back(names_[w.id]);
    std::sort(names.begin(), names.end());
    return names;
  }
  int32_t used_blocks() const { return total_blocks_ - free_blocks_; }
  bool idle() const { return waiting_.empty() && running_.empty(); }

 private:
  struct State {
    WaitingSequence req;
    int32_t computed = 0;
    int32_t known = 0;
    int32_t generated = 0;
    int32_t blocks = 0;
  };
  std::vector<RunningSequence> RunningView() const {
    std::vector<RunningSequence> v;
    for (const auto& [id, s] : running_) {
      v.push_back({id, s.req.priority, s.req.arrival, s.computed, s.known});
    }
    return v;
  }

  int32_t free_blocks_;
  int32_t total_blocks_;
  SchedulerConfig config_;
  std::vector<std::string> names_;
  std::vector<WaitingSequence> waiting_;
  std::map<int64_t, State> running_;
  int64_t next_arrival_ = 0;
};

using Names = std::vector<std::string>;

TEST(SchedulerTest, ReservedBlocksCoverPromptAndMaxNewTokens) {
  EXPECT_EQ(ReservedBlocks(6, 2, 4), 2);
  EXPECT_EQ(ReservedBlocks(6, 3, 4), 3);
  EXPECT_EQ(ReservedBlocks(1, 0, 16), 1);
}

// Chunked prefill mixed with decode, admission bounded by the token budget and by the blocks
// reserved up front, blocks returned when sequences finish.
TEST(SchedulerTest, ChunkedPrefillMixedWithDecode) {
  SchedulerConfig config{/*block_size=*/4, /*max_batched_tokens=*/8, /*max_running_requests=*/3};
  Simulation sim(/*total_blocks=*/10, config);
  sim.Submit("A", 6, 2);   // 2 blocks
  sim.Submit("B", 10, 2);  // 3 blocks
  sim.Submit("C", 3, 1);   // 1 block
  sim.Submit("D", 20, 4);  // 6 blocks

  // 1: A's whole prompt and the first 2 tokens of B fill the budget; C and D wait.
  EXPECT_EQ(sim.Step(), (Names{"A:6", "B:2"}));
  EXPECT_EQ(sim.Waiting(), (Names{"C", "D"}));
  EXPECT_EQ(sim.used_blocks(), 5);
  // 2: A decodes (its 2nd and last token: it finishes), B continues its prefill.
  EXPECT_EQ(sim.Step(), (Names{"A:1", "B:7"}));
  EXPECT_EQ(sim.Waiting(), (Names{"C", "D"}));
  EXPECT_EQ(sim.used_blocks(), 3);
  // 3: B's last prompt token, then C and D are admitted (D's 6 blocks fit exactly).
  EXPECT_EQ(sim.Step(), (Names{"B:1", "C:3", "D:4"}));
  EXPECT_EQ(sim.Waiting(), Names{});
  EXPECT_EQ(sim.used_blocks(), 9);  // C finished (max_new 1): B 3 + D 6
  // 4: B decodes and finishes; D's prefill takes the rest of the budget.
  EXPECT_EQ(sim.Step(), (Names{"B:1", "D:7"}));
  EXPECT_EQ(sim.used_blocks(), 6);
  EXPECT_EQ(sim.Step(), (Names{"D:8"}));
  EXPECT_EQ(sim.Step(), (Names{"D:1"}));  // prompt done: first token
  EXPECT_EQ(sim.Step(), (Names{"D:1"}));
  EXPECT_EQ(sim.Step(), (Names{"D:1"}));
  EXPECT_EQ(sim.used_blocks(), 6);
  EXPECT_EQ(sim.Step(), (Names{"D:1"}));  // 4th token: D finishes
  EXPECT_EQ(sim.used_blocks(), 0);
  EXPECT_TRUE(sim.idle());
  EXPECT_EQ(sim.Step(), Names{});
}

// Strict order: when the head of the queue does not fit, smaller requests behind it wait too
// (no starvation), but a higher priority request goes first.
TEST(SchedulerTest, HeadOfQueueBlocksAndPriorityJumpsAhead) {
  SchedulerConfig config{/*block_size=*/4, /*max_batched_tokens=*/64, /*max_running_requests=*/8};
  Simulation sim(/*total_blocks=*/4, config);
  sim.Submit("X", 8, 4);  // 3 blocks
  EXPECT_EQ(sim.Step(), (Names{"X:8"}));
  EXPECT_EQ(sim.used_blocks(), 3);
  sim.Submit("Y", 4, 4);  // 2 blocks: does not fit
  sim.Submit("Z", 2, 2);  // 1 block: would fit, but Y is ahead
  EXPECT_EQ(sim.Step(), (Names{"X:1"}));
  EXPECT_EQ(sim.Waiting(), (Names{"Y", "Z"}));
  sim.Submit("P", 2, 2, /*priority=*/5);  // 1 block, higher priority: admitted before Y
  EXPECT_EQ(sim.Step(), (Names{"X:1", "P:2"}));
  EXPECT_EQ(sim.Waiting(), (Names{"Y", "Z"}));
  EXPECT_EQ(sim.used_blocks(), 4);
  // Both finish (X's 4th, P's 2nd token); P decodes first, it has the higher priority.
  EXPECT_EQ(sim.Step(), (Names{"P:1", "X:1"}));
  EXPECT_EQ(sim.used_blocks(), 0);
  EXPECT_EQ(sim.Step(), (Names{"Y:4", "Z:2"}));  // arrival order
  EXPECT_EQ(sim.used_blocks(), 3);
  EXPECT_EQ(sim.Waiting(), Names{});
}

TEST(SchedulerTest, RunningCapLimitsAdmission) {
  SchedulerConfig config{/*block_size=*/16, /*max_batched_tokens=*/100, /*max_running_requests=*/2};
  Simulation sim(/*total_blocks=*/100, config);
  sim.Submit("A", 5, 3);
  sim.Submit("B", 5, 3);
  sim.Submit("C", 5, 3);
  EXPECT_EQ(sim.Step(), (Names{"A:5", "B:5"}));
  EXPECT_EQ(sim.Waiting(), (Names{"C"}));
  EXPECT_EQ(sim.Step(), (Names{"A:1", "B:1"}));
  EXPECT_EQ(sim.Waiting(), (Names{"C"}));
  EXPECT_EQ(sim.Step(), (Names{"A:1", "B:1"}));  // both finish
  EXPECT_EQ(sim.used_blocks(), 0);
  EXPECT_EQ(sim.Step(), (Names{"C:5"}));
  EXPECT_EQ(sim.used_blocks(), 1);
}

// A token budget smaller than the number of decoders: the later ones wait a step, in order.
TEST(SchedulerTest, TokenBudgetSmallerThanDecodeBatch) {
  std::vector<RunningSequence> running = {{0, 0, 0, 10, 11}, {1, 0, 1, 10, 11}, {2, 0, 2, 10, 11}};
  SchedulerConfig config{16, /*max_batched_tokens=*/2, 8};
  const SchedulePlan plan = Schedule({{3, 0, 3, 4, 4}}, running, 100, config);
  ASSERT_EQ(plan.scheduled.size(), 2u);
  EXPECT_EQ(plan.scheduled[0].id, 0);
  EXPECT_EQ(plan.scheduled[1].id, 1);
  EXPECT_EQ(plan.idle, std::vector<int64_t>{2});
  EXPECT_EQ(plan.waiting, std::vector<int64_t>{3});
  EXPECT_EQ(plan.num_batched_tokens, 2);
}

// Decodes come before unfinished prefills, each group by priority then arrival.
TEST(SchedulerTest, DecodesBeforePrefillsByPriority) {
  std::vector<RunningSequence> running = {{0, 0, 0, 4, 20},   // prefill
                                          {1, 0, 1, 30, 31},  // decode
                                          {2, 3, 2, 30, 31},  // decode, high priority
                                          {3, 3, 3, 0, 20}};  // prefill, high priority
  SchedulerConfig config{16, 24, 8};
  const SchedulePlan plan = Schedule({}, running, 0, config);
  std::vector<std::pair<int64_t, int32_t>> got;
  for (const auto& s : plan.scheduled) got.push_back({s.id, s.num_tokens});
  EXPECT_EQ(got, (std::vector<std::pair<int64_t, int32_t>>{{2, 1}, {1, 1}, {3, 20}, {0, 2}}));
}

// A cached prompt prefix is neither reserved again nor prefilled; its blocks that nobody owns
// count among the free blocks and are taken by the admission.
TEST(SchedulerTest, CachedPrefixShrinksReservationAndPrefill) {
  SchedulerConfig config;
  config.block_size = 4;
  config.max_batched_tokens = 64;
  WaitingSequence w;
  w.id = 7;
  w.prompt_tokens = 17;  // 5 blocks with 3 new tokens
  w.max_new_tokens = 3;
  w.cached_tokens = 8;  // 2 cached blocks, one of them unowned
  w.cached_evictable_blocks = 1;
  SchedulePlan plan = Schedule({w}, {}, /*free_blocks=*/4, config);
  ASSERT_EQ(plan.scheduled.size(), 1u);
  EXPECT_EQ(plan.scheduled[0].num_tokens, 9) << "prefill starts after the cached prefix";
  EXPECT_EQ(plan.scheduled[0].blocks_to_reserve, 3);
  EXPECT_EQ(plan.blocks_reserved, 4) << "3 new blocks + 1 revived cached block";
  // One free block less and it no longer fits (the revived block is one of the free ones).
  plan = Schedule({w}, {}, /*free_blocks=*/3, config);
  EXPECT_TRUE(plan.scheduled.empty());
  EXPECT_EQ(plan.waiting, std::vector<int64_t>{7});
  // Without the cache the same request needs all 5 blocks.
  w.cached_tokens = 0;
  w.cached_evictable_blocks = 0;
  plan = Schedule({w}, {}, /*free_blocks=*/4, config);
  EXPECT_TRUE(plan.scheduled.empty());
  plan = Schedule({w}, {}, /*free_blocks=*/5, config);
  ASSERT_EQ(plan.scheduled.size(), 1u);
  EXPECT_EQ(plan.scheduled[0].num_tokens, 17);
  EXPECT_EQ(plan.scheduled[0].blocks_to_reserve, 5);
}

}  // namespace
}  // namespace spqr
