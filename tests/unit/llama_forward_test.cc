// RunLlamaForward against a recording fake ForwardOps: the exact op sequence with its buffers and
// weights, the StepLayout it builds from a ragged plan (prefill chunks, decode, num_logits 0 and
// several), which rows' logits land where, and error propagation. ValidateStepPlan: every error
// names the offending sequence and field.
#include "engine/backend/forward/llama_forward.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace spqr {
namespace {

using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;

const char* Name(Act a) {
  static constexpr const char* kNames[] = {"X", "H",    "Proj", "Q",     "Attn",  "K",
                                           "V", "Gate", "Up",   "Final", "Logits"};
  return kNames[static_cast<int>(a)];
}

// Weights whose tensors the fake recognizes by address (nothing is ever read from them).
struct FakeModel {
  explicit FakeModel(int64_t layers) {
    w.config.vocab_size = 5;
    w.config.hidden_size = 8;
    w.config.intermediate_size = 12;
    w.config.num_hidden_layers = layers;
    w.config.num_attention_heads = 2;
    w.config.num_key_value_heads = 1;
    w.config.head_dim = 4;
    w.config.rms_norm_eps = 1e-5;
    w.layers.resize(static_cast<size_t>(layers));
    names[&w.embed_tokens] = "embed";
    names[&w.norm] = "norm";
    names[&w.lm_head] = "lm_head";
    for (int64_t i = 0; i < layers; ++i) {
      DecoderLayerWeights& l = w.layers[i];
      const std::string p = absl::StrCat("L", i, ".");
      names[&l.input_layernorm] = p + "in_norm";
      names[&l.post_attention_layernorm] = p + "post_norm";
      names[&l.q_proj] = p + "q";
      names[&l.k_proj] = p + "k";
      names[&l.v_proj] = p + "v";
      names[&l.o_proj] = p + "o";
      names[&l.gate_proj] = p + "gate";
      names[&l.up_proj] = p + "up";
      names[&l.down_proj] = p + "down";
    }
  }
  std::string operator()(const void* p) const {
    auto it = names.find(p);
    return it == names.end() ? "?" : it->second;
  }
  LlamaWeights w;
  std::map<const void*, std::string> names;
};

// Records every call as one line and tracks, per buffer row, which token row of the step it was
// derived from (so the test can see which rows reach the logits). Fails the `fail_at`-th call.
class RecordingOps : public ForwardOps {
 public:
  explicit RecordingOps(const FakeModel& m) : m_(m) {}

  absl::Status BeginStep(const StepLayout& step) override {
    ids.assign(step.token_ids.begin(), step.token_ids.end());
    positions.assign(step.positions.begin(), step.positions.end());
    seqs.assign(step.seqs.begin(), step.seqs.end());
    logit_rows.assign(step.logit_rows.begin(), step.logit_rows.end());
    const int64_t n = static_cast<int64_t>(ids.size());
    for (int a = 0; a <= static_cast<int>(Act::kLogits); ++a) {
      const bool logit_buffer = a >= static_cast<int>(Act::kFinal);
      rows_[a].assign(static_cast<size_t>(logit_buffer ? logit_rows.size() : n), -1);
    }
    return Record("BeginStep");
  }
  absl::Status Embed(const TensorView& table, Act out) override {
    for (size_t r = 0; r < ids.size(); ++r) row(out)[r] = static_cast<int64_t>(r);
    return Record(absl::StrCat("Embed ", m_(&table), " -> ", Name(out)));
  }
  absl::Status RmsNorm(Act in, const TensorView& w, float eps, Act out) override {
    eps_seen.push_back(eps);
    Derive(in, out);
    return Record(absl::StrCat("RmsNorm ", Name(in), " ", m_(&w), " -> ", Name(out)));
  }
  absl::Status Project(Act in, std::span<const Projection> ps) override {
    std::vector<std::string> parts;
    for (const Projection& p : ps) {
      Derive(in, p.out);
      parts.push_back(absl::StrCat(m_(p.linear), " -> ", Name(p.out)));
    }
    return Record(absl::StrCat("Project ", Name(in), ": ", absl::StrJoin(parts, ", ")));
  }
  absl::Status Rope(Act q, Act k) override {
    Check(q);
    Check(k);
    return Record(absl::StrCat("Rope ", Name(q), " ", Name(k)));
  }
  absl::Status StoreKv(int64_t layer, Act k, Act v) override {
    Check(k);
    Check(v);
    return Record(absl::StrCat("StoreKv ", layer, " ", Name(k), " ", Name(v)));
  }
  absl::Status Attention(int64_t layer, Act q, Act out) override {
    Derive(q, out);
    return Record(absl::StrCat("Attention ", layer, " ", Name(q), " -> ", Name(out)));
  }
  absl::Status SwiGlu(Act gate, Act up, Act out) override {
    EXPECT_EQ(row(gate), row(up));
    Derive(gate, out);
    return Record(absl::StrCat("SwiGlu ", Name(gate), " ", Name(up), " -> ", Name(out)));
  }
  absl::Status AddInPlace(Act x, Act y) override {
    EXPECT_EQ(row(x), row(y)) << "residual add of rows from different tokens";
    return Record(absl::StrCat("Add ", Name(x), " += ", Name(y)));
  }
  absl::Status GatherLogitRows(Act in, Act out) override {
    for (size_t i = 0; i < logit_rows.size(); ++i) row(out)[i] = row(in).at(logit_rows[i]);
    return Record(absl::StrCat("Gather ", Name(in), " -> ", Name(out)));
  }
  absl::Status ReadLogits(Act logits, std::span<float> out) override {
    const std::vector<int64_t>& src = row(logits);
    EXPECT_EQ(out.size(), src.size() * m_.w.config.vocab_size);
    // Logit v of output row i = 100 * (the step row it came from) + v.
    for (size_t i = 0; i < src.size(); ++i) {
      for (int64_t v = 0; v < m_.w.config.vocab_size; ++v) {
        out[i * m_.w.config.vocab_size + v] = static_cast<float>(100 * src[i] + v);
      }
    }
    return Record(absl::StrCat("ReadLogits ", Name(logits)));
  }

  std::vector<std::string> calls;
  std::vector<int32_t> ids;
  std::vector<int64_t> positions;
  std::vector<StepSequence> seqs;
  std::vector<int64_t> logit_rows;
  std::vector<float> eps_seen;
  int fail_at = -1;  // index of the call that fails, -1 = none

 private:
  std::vector<int64_t>& row(Act a) { return rows_[static_cast<int>(a)]; }
  void Check(Act a) { EXPECT_EQ(row(a).size(), ids.size()) << Name(a); }
  // out's rows derive from in's rows; both must have the same row count and in must be written.
  void Derive(Act in, Act out) {
    ASSERT_EQ(row(in).size(), row(out).size()) << Name(in) << " -> " << Name(out);
    for (int64_t r : row(in)) ASSERT_GE(r, 0) << Name(in) << " read before it was written";
    row(out) = row(in);
  }
  absl::Status Record(std::string call) {
    calls.push_back(std::move(call));
    if (static_cast<int>(calls.size()) - 1 == fail_at) {
      return absl::InternalError(absl::StrCat("fake failure in ", calls.back()));
    }
    return absl::OkStatus();
  }

  const FakeModel& m_;
  std::vector<int64_t> rows_[static_cast<int>(Act::kLogits) + 1];
};

std::vector<std::string> LayerCalls(int64_t i) {
  const std::string p = absl::StrCat("L", i, ".");
  return {absl::StrCat("RmsNorm X ", p, "in_norm -> H"),
          absl::StrCat("Project H: ", p, "q -> Q, ", p, "k -> K, ", p, "v -> V"),
          "Rope Q K",
          absl::StrCat("StoreKv ", i, " K V"),
          absl::StrCat("Attention ", i, " Q -> Attn"),
          absl::StrCat("Project Attn: ", p, "o -> Proj"),
          "Add X += Proj",
          absl::StrCat("RmsNorm X ", p, "post_norm -> H"),
          absl::StrCat("Project H: ", p, "gate -> Gate, ", p, "up -> Up"),
          "SwiGlu Gate Up -> Gate",
          absl::StrCat("Project Gate: ", p, "down -> Proj"),
          "Add X += Proj"};
}

std::vector<std::string> ExpectedCalls(int64_t layers, bool logits) {
  std::vector<std::string> c = {"BeginStep", "Embed embed -> X"};
  for (int64_t i = 0; i < layers; ++i) {
    for (std::string& s : LayerCalls(i)) c.push_back(std::move(s));
  }
  if (logits) {
    c.insert(c.end(), {"Gather X -> Final", "RmsNorm Final norm -> Final",
                       "Project Final: lm_head -> Logits", "ReadLogits Logits"});
  }
  return c;
}

// A ragged step: a non-final prefill chunk (no logits), a decode step, a prompt-scoring chunk
// (logits for every token) and a final prefill chunk (logits for its last token).
struct RaggedPlan {
  std::vector<int32_t> t0 = {3, 1, 4, 1}, t1 = {2}, t2 = {0, 4, 4}, t3 = {1, 2};
  std::vector<int32_t> b0 = {7, 2}, b1 = {0, 5}, b2 = {3}, b3 = {6, 1, 4};
  StepPlan plan{{{t0, 0, b0, 0}, {t1, 5, b1, 1}, {t2, 0, b2, 3}, {t3, 8, b3, 1}}};
};

TEST(RunLlamaForward, OpSequenceLayoutAndLogitRowsOfARaggedStep) {
  FakeModel m(3);
  RecordingOps ops(m);
  RaggedPlan p;
  StepOutput out;
  ASSERT_TRUE(RunLlamaForward(m.w, p.plan, ops, &out).ok());

  EXPECT_THAT(ops.calls, ElementsAreArray(ExpectedCalls(3, true)));
  EXPECT_THAT(ops.ids, ElementsAre(3, 1, 4, 1, 2, 0, 4, 4, 1, 2));
  EXPECT_THAT(ops.positions, ElementsAre(0, 1, 2, 3, 5, 0, 1, 2, 8, 9));
  ASSERT_EQ(ops.seqs.size(), 4u);
  const int64_t offsets[] = {0, 4, 5, 8}, counts[] = {4, 1, 3, 2}, starts[] = {0, 5, 0, 8};
  for (size_t i = 0; i < 4; ++i) {
    EXPECT_EQ(ops.seqs[i].row_offset, offsets[i]) << i;
    EXPECT_EQ(ops.seqs[i].num_tokens, counts[i]) << i;
    EXPECT_EQ(ops.seqs[i].start_pos, starts[i]) << i;
    // The block table is the plan's own (no copy, no truncation).
    EXPECT_EQ(ops.seqs[i].block_table.data(), p.plan.seqs[i].block_table.data()) << i;
    EXPECT_EQ(ops.seqs[i].block_table.size(), p.plan.seqs[i].block_table.size()) << i;
  }
  // Rows with logits, in plan order: the decode row, all three scored rows, the last prefill row.
  EXPECT_THAT(ops.logit_rows, ElementsAre(4, 5, 6, 7, 9));
  EXPECT_EQ(out.vocab_size, 5);
  ASSERT_EQ(out.logits.size(), 5u * 5u);
  const int64_t expected_rows[] = {4, 5, 6, 7, 9};
  for (size_t i = 0; i < 5; ++i) {
    for (int v = 0; v < 5; ++v) {
      EXPECT_EQ(out.row(i)[v], static_cast<float>(100 * expected_rows[i] + v)) << i << "," << v;
    }
  }
  // Every RMSNorm gets the config's eps as a float.
  ASSERT_EQ(ops.eps_seen.size(), 3u * 2 + 1);
  for (float e : ops.eps_seen) EXPECT_EQ(e, 1e-5f);
}

TEST(RunLlamaForward, NoLogitsSkipsTheHead) {
  FakeModel m(2);
  RecordingOps ops(m);
  std::vector<int32_t> a = {1, 2, 3}, b = {4}, table = {0};
  StepPlan plan{{{a, 0, table, 0}, {b, 3, table, 0}}};
  StepOutput out;
  out.logits.assign(7, 1.0f);  // stale contents from an earlier step are dropped
  ASSERT_TRUE(RunLlamaForward(m.w, plan, ops, &out).ok());
  EXPECT_THAT(ops.calls, ElementsAreArray(ExpectedCalls(2, false)));
  EXPECT_TRUE(ops.logit_rows.empty());
  EXPECT_EQ(out.vocab_size, 5);
  EXPECT_TRUE(out.logits.empty());
}

TEST(RunLlamaForward, EmptyPlanRunsNoOps) {
  FakeModel m(2);
  RecordingOps ops(m);
  StepOutput out;
  out.logits.assign(3, 1.0f);
  ASSERT_TRUE(RunLlamaForward(m.w, StepPlan{}, ops, &out).ok());
  EXPECT_TRUE(ops.calls.empty());
  EXPECT_EQ(out.vocab_size, 5);
  EXPECT_TRUE(out.logits.empty());
}

TEST(RunLlamaForward, AnOpErrorEndsTheStepAndIsReturned) {
  const std::vector<std::string> all = ExpectedCalls(2, true);
  for (int fail_at :
       {0, 1, 5, static_cast<int>(all.size()) - 3, static_cast<int>(all.size()) - 1}) {
    FakeModel m(2);
    RecordingOps ops(m);
    ops.fail_at = fail_at;
    RaggedPlan p;
    StepOutput out;
    const absl::Status st = RunLlamaForward(m.w, p.plan, ops, &out);
    EXPECT_EQ(st.code(), absl::StatusCode::kInternal) << fail_at;
    EXPECT_THAT(std::string(st.message()), HasSubstr(all[fail_at])) << fail_at;
    EXPECT_EQ(ops.calls.size(), static_cast<size_t>(fail_at + 1)) << "ops ran after the error";
  }
}

// ValidateStepPlan: every rejection names the sequence and field.
class ValidateStepPlanTest : public ::testing::Test {
 protected:
  absl::Status Validate(const StepPlan& plan) {
    return ValidateStepPlan(plan, /*vocab_size=*/10, pool_, "TEST");
  }
  KvPoolShape pool_{/*num_blocks=*/4, /*block_size=*/4};
  std::vector<int32_t> tokens_ = {1, 2, 3}, table_ = {0, 1};
};

TEST_F(ValidateStepPlanTest, AcceptsValidPlans) {
  EXPECT_TRUE(Validate(StepPlan{}).ok());
  // Blocks past those the positions need are not looked at (99 is outside the pool); num_logits
  // may be 0 or every token.
  const std::vector<int32_t> long_table = {2, 3, 99};
  StepPlan plan{{{tokens_, 0, table_, 0}, {tokens_, 2, long_table, 3}}};
  EXPECT_TRUE(Validate(plan).ok()) << Validate(plan);
}

TEST_F(ValidateStepPlanTest, NoPoolIsFailedPreconditionNamingTheBackend) {
  pool_ = KvPoolShape{0, 16};
  const absl::Status st = Validate(StepPlan{{{tokens_, 0, table_, 1}}});
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(st.message()), HasSubstr("TEST backend: Forward before AllocateKvPool"));
}

TEST_F(ValidateStepPlanTest, EachErrorNamesTheSequenceAndField) {
  const std::vector<int32_t> none, bad_id = {1, 10, 2}, negative_id = {-1}, short_table = {0},
                                   out_of_pool = {0, 4}, negative_block = {-3};
  const struct {
    SequenceStep bad;
    std::string message;
  } cases[] = {
      {{none, 0, table_, 0}, "seqs[1]: no tokens"},
      {{tokens_, -1, table_, 1}, "seqs[1]: start_pos -1 is negative"},
      {{tokens_, 0, table_, -1}, "seqs[1]: num_logits -1 outside [0, 3]"},
      {{tokens_, 0, table_, 4}, "seqs[1]: num_logits 4 outside [0, 3]"},
      {{bad_id, 0, table_, 1}, "seqs[1].tokens[1]: id 10 outside [0, 10)"},
      {{negative_id, 0, table_, 1}, "seqs[1].tokens[0]: id -1 outside [0, 10)"},
      {{tokens_, 2, short_table, 1}, "seqs[1]: block table has 1 blocks, positions [0, 5) need 2"},
      {{tokens_, 2, out_of_pool, 1}, "seqs[1].block_table[1]: block 4 outside the pool [0, 4)"},
      {{tokens_, 0, negative_block, 1}, "seqs[1].block_table[0]: block -3 outside the pool"},
  };
  // The first sequence is valid and uses blocks 2 and 3, so only the second can be at fault.
  const std::vector<int32_t> first_table = {2, 3};
  for (const auto& c : cases) {
    StepPlan plan{{{tokens_, 0, first_table, 1}, c.bad}};
    const absl::Status st = Validate(plan);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << c.message;
    EXPECT_THAT(std::string(st.message()), HasSubstr(c.message));
  }
}

TEST_F(ValidateStepPlanTest, TwoSequencesWritingOneSlotAreRejected) {
  // Both write position 1 of block 0 (slot 1): the second names its position, slot and block.
  const std::vector<int32_t> a = {1, 2}, b = {3}, shared = {0};
  StepPlan plan{{{a, 0, shared, 1}, {b, 1, shared, 1}}};
  const absl::Status st = Validate(plan);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(st.message()),
              HasSubstr("seqs[1]: position 1 writes KV slot 1 of block 0, already written"));
  // Different positions of a shared block are fine (a forked prefix writing its own slots).
  StepPlan disjoint{{{a, 0, shared, 1}, {b, 2, shared, 1}}};
  EXPECT_TRUE(Validate(disjoint).ok());
}

}  // namespace
}  // namespace spqr
