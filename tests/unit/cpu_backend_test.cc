// The CPU backend's forward-step contract on tiny in-memory models: chunked prefill equals one-shot
// prefill, a sequence's logits do not depend on what else is in the batch, decode through the
// paged cache equals scoring the whole sequence, and invalid plans are rejected.
#include "engine/backend/cpu/cpu_backend.h"

#include <cmath>
#include <cstring>
#include <numeric>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/unit/cpu_test_weights.h"

namespace spqr {
namespace {

using ::spqr::testing::MakeTestWeights;
using ::spqr::testing::TestModelSpec;
using ::testing::HasSubstr;

std::unique_ptr<Backend> MakeBackend(const TestModelSpec& spec, int num_blocks = 16,
                                     int block_size = 4, int threads = 2) {
  auto backend = CreateCpuBackend(MakeTestWeights(spec), CpuBackendOptions{threads});
  EXPECT_TRUE(backend.ok()) << backend.status();
  EXPECT_TRUE((*backend)->AllocateKvPool({num_blocks, block_size}).ok());
  return std::move(*backend);
}

const std::vector<int32_t> kPrompt = {3, 17, 42, 0, 60, 8, 8, 25};

// Logits of every prompt token, prefilling it in chunks of the given sizes.
std::vector<float> ChunkedPrefill(Backend* backend, const std::vector<int32_t>& prompt,
                                  const std::vector<int>& chunks,
                                  const std::vector<int32_t>& table) {
  std::vector<float> logits;
  int pos = 0;
  for (int len : chunks) {
    StepPlan plan;
    SequenceStep s;
    s.tokens = std::span<const int32_t>(prompt.data() + pos, len);
    s.start_pos = pos;
    s.block_table = table;
    s.num_logits = len;
    plan.seqs.push_back(s);
    StepOutput out;
    absl::Status st = backend->Forward(plan, &out);
    EXPECT_TRUE(st.ok()) << st;
    logits.insert(logits.end(), out.logits.begin(), out.logits.end());
    pos += len;
  }
  return logits;
}

bool BitIdentical(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

class CpuBackendVariantTest : public ::testing::TestWithParam<TestModelSpec> {};

TestModelSpec Qwen2F16() {
  TestModelSpec s;
  s.model_type = "qwen2";
  s.dtype = DType::kF16;
  s.bias = true;
  s.tie_embeddings = true;
  s.heads = 4;
  s.kv_heads = 4;
  s.head_dim = 32;
  return s;
}

TestModelSpec LlamaF32() {
  TestModelSpec s;
  s.dtype = DType::kF32;
  s.kv_heads = 1;
  return s;
}

INSTANTIATE_TEST_SUITE_P(Models, CpuBackendVariantTest,
                         ::testing::Values(TestModelSpec{}, Qwen2F16(), LlamaF32()),
                         [](const auto& info) {
                           return info.param.model_type + "_" +
                                  std::string(DTypeName(info.param.dtype));
                         });

TEST_P(CpuBackendVariantTest, ChunkedPrefillEqualsOneShotPrefill) {
  auto one_shot = MakeBackend(GetParam());
  auto chunked = MakeBackend(GetParam());
  const std::vector<int32_t> table = {5, 1, 9};
  std::vector<float> a = ChunkedPrefill(one_shot.get(), kPrompt, {8}, table);
  std::vector<float> b = ChunkedPrefill(chunked.get(), kPrompt, {3, 4, 1}, table);
  ASSERT_EQ(a.size(), kPrompt.size() * GetParam().vocab);
  for (float x : a) ASSERT_TRUE(std::isfinite(x));
  // Attention always reads keys back from the pool, so chunking changes no arithmetic at all.
  EXPECT_TRUE(BitIdentical(a, b));
  // Sanity: the logits are not constant.
  EXPECT_NE(a[0], a[1]);
}

TEST_P(CpuBackendVariantTest, BatchedSequencesAreBitIdenticalToEachAlone) {
  const std::vector<int32_t> prompt_b = {9, 9, 1};
  const std::vector<int32_t> table_a = {2, 0, 7}, table_b = {4, 11};
  // Alone: each sequence in its own backend.
  auto alone_a = MakeBackend(GetParam());
  auto alone_b = MakeBackend(GetParam());
  std::vector<float> la = ChunkedPrefill(alone_a.get(), kPrompt, {8}, table_a);
  std::vector<float> lb = ChunkedPrefill(alone_b.get(), prompt_b, {3}, table_b);

  auto batched = MakeBackend(GetParam());
  StepPlan plan;
  plan.seqs.push_back({kPrompt, 0, table_a, 8});
  plan.seqs.push_back({prompt_b, 0, table_b, 3});
  StepOutput out;
  ASSERT_TRUE(batched->Forward(plan, &out).ok());
  const int64_t vocab = GetParam().vocab;
  ASSERT_EQ(out.vocab_size, vocab);
  ASSERT_EQ(out.logits.size(), static_cast<size_t>(11 * vocab));
  EXPECT_TRUE(
      BitIdentical(la, std::vector<float>(out.logits.begin(), out.logits.begin() + 8 * vocab)));
  EXPECT_TRUE(
      BitIdentical(lb, std::vector<float>(out.logits.begin() + 8 * vocab, out.logits.end())));

  // A decode step for both (ragged: A at position 8, B at 3) against the same steps alone.
  const std::vector<int32_t> next_a = {14}, next_b = {33};
  StepPlan decode;
  decode.seqs.push_back({next_a, 8, table_a, 1});
  decode.seqs.push_back({next_b, 3, table_b, 1});
  ASSERT_TRUE(batched->Forward(decode, &out).ok());
  StepOutput oa, ob;
  StepPlan da, db;
  da.seqs.push_back({next_a, 8, table_a, 1});
  db.seqs.push_back({next_b, 3, table_b, 1});
  ASSERT_TRUE(alone_a->Forward(da, &oa).ok());
  ASSERT_TRUE(alone_b->Forward(db, &ob).ok());
  EXPECT_TRUE(
      BitIdentical(oa.logits, std::vector<float>(out.logits.begin(), out.logits.begin() + vocab)));
  EXPECT_TRUE(
      BitIdentical(ob.logits, std::vector<float>(out.logits.begin() + vocab, out.logits.end())));
}

TEST_P(CpuBackendVariantTest, DecodeStepsEqualScoringTheWholeSequence) {
  auto scored = MakeBackend(GetParam());
  auto decoded = MakeBackend(GetParam());
  const std::vector<int32_t> table = {3, 6, 8};
  std::vector<float> want = ChunkedPrefill(scored.get(), kPrompt, {8}, table);
  std::vector<float> got = ChunkedPrefill(decoded.get(), kPrompt, {5, 1, 1, 1}, table);
  EXPECT_TRUE(BitIdentical(want, got));
}

TEST(CpuBackendTest, ResultsDoNotDependOnThreadCount) {
  auto one = MakeBackend(TestModelSpec{}, 16, 4, 1);
  auto three = MakeBackend(TestModelSpec{}, 16, 4, 3);
  const std::vector<int32_t> table = {0, 1};
  EXPECT_TRUE(BitIdentical(ChunkedPrefill(one.get(), kPrompt, {8}, table),
                           ChunkedPrefill(three.get(), kPrompt, {8}, table)));
}

TEST(CpuBackendTest, OnlyRequestedLogitRowsAreReturned) {
  auto backend = MakeBackend(TestModelSpec{});
  auto reference = MakeBackend(TestModelSpec{});
  const std::vector<int32_t> table = {0, 1};
  std::vector<float> all = ChunkedPrefill(reference.get(), kPrompt, {8}, table);
  StepPlan plan;
  plan.seqs.push_back({kPrompt, 0, table, 2});
  StepOutput out;
  ASSERT_TRUE(backend->Forward(plan, &out).ok());
  const int64_t vocab = TestModelSpec{}.vocab;
  EXPECT_TRUE(BitIdentical(out.logits, std::vector<float>(all.end() - 2 * vocab, all.end())));
  plan.seqs[0].num_logits = 0;
  plan.seqs[0].block_table = std::vector<int32_t>{};  // replaced below; keep the span valid
  const std::vector<int32_t> table2 = {2, 3};
  plan.seqs[0].block_table = table2;
  ASSERT_TRUE(backend->Forward(plan, &out).ok());
  EXPECT_TRUE(out.logits.empty());
}

TEST(CpuBackendTest, KvBytesAndMemoryStats) {
  TestModelSpec spec;
  auto backend = MakeBackend(spec, 10, 4);
  EXPECT_EQ(backend->name(), "cpu");
  const int64_t per_token = spec.layers * 2 * spec.kv_heads * spec.head_dim * 4;
  EXPECT_EQ(backend->KvBytesPerToken(), per_token);
  EXPECT_EQ(backend->memory_stats().kv_pool_bytes, per_token * 10 * 4);
  EXPECT_GT(backend->memory_stats().weight_bytes, 0);
  EXPECT_EQ(backend->kv_pool_shape().num_blocks, 10);
  EXPECT_EQ(backend->kv_pool_shape().block_size, 4);
}

absl::Status RunPlan(Backend* backend, const SequenceStep& s) {
  StepPlan plan;
  plan.seqs.push_back(s);
  StepOutput out;
  return backend->Forward(plan, &out);
}

TEST(CpuBackendTest, RejectsInvalidPlans) {
  auto backend = MakeBackend(TestModelSpec{}, /*num_blocks=*/4, /*block_size=*/4);
  const std::vector<int32_t> ok_tokens = {1, 2, 3};
  const std::vector<int32_t> table = {0, 1};
  ASSERT_TRUE(RunPlan(backend.get(), {ok_tokens, 0, table, 1}).ok());

  const std::vector<int32_t> bad_id = {1, 61, 3};
  const std::vector<int32_t> neg_id = {-1};
  const std::vector<int32_t> none = {};
  const std::vector<int32_t> short_table = {0};
  const std::vector<int32_t> out_of_pool = {0, 4};
  const std::vector<int32_t> negative_block = {-2, 1};
  struct Case {
    SequenceStep step;
    std::string message;
  };
  const Case cases[] = {
      {{bad_id, 0, table, 1}, "id 61 outside [0, 61)"},
      {{neg_id, 0, table, 1}, "id -1"},
      {{none, 0, table, 0}, "no tokens"},
      {{ok_tokens, -1, table, 1}, "start_pos -1"},
      {{ok_tokens, 0, table, 4}, "num_logits 4"},
      {{ok_tokens, 0, table, -1}, "num_logits -1"},
      {{ok_tokens, 2, short_table, 1}, "need 2"},
      {{ok_tokens, 4, out_of_pool, 1}, "block 4 outside the pool"},
      {{ok_tokens, 0, negative_block, 1}, "block -2 outside the pool"},
  };
  for (const Case& c : cases) {
    absl::Status st = RunPlan(backend.get(), c.step);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << c.message;
    EXPECT_THAT(std::string(st.message()), HasSubstr(c.message));
  }

  // Two sequences writing the same KV slot in one step.
  StepPlan clash;
  clash.seqs.push_back({ok_tokens, 0, table, 1});
  clash.seqs.push_back({ok_tokens, 2, table, 1});
  StepOutput out;
  absl::Status st = backend->Forward(clash, &out);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(st.message()), HasSubstr("already written"));
}

TEST(CpuBackendTest, ForwardBeforeAllocateFailsAndBadWeightsAreRejected) {
  auto backend = CreateCpuBackend(MakeTestWeights(TestModelSpec{}), CpuBackendOptions{});
  ASSERT_TRUE(backend.ok());
  const std::vector<int32_t> tokens = {1};
  const std::vector<int32_t> table = {0};
  EXPECT_EQ(RunPlan(backend->get(), {tokens, 0, table, 1}).code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_FALSE((*backend)->AllocateKvPool({0, 16}).ok());

  auto weights = MakeTestWeights(TestModelSpec{});
  auto broken = std::make_shared<LlamaWeights>(*weights);
  broken->layers[1].k_proj.weight.shape = {16, 96};
  auto st = CreateCpuBackend(broken, CpuBackendOptions{});
  EXPECT_EQ(st.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(st.status().message()), HasSubstr("model.layers.1.self_attn.k_proj"));

  auto int_weights = std::make_shared<LlamaWeights>(*weights);
  int_weights->norm.dtype = DType::kI32;
  EXPECT_THAT(std::string(CreateCpuBackend(int_weights, {}).status().message()),
              HasSubstr("dtype I32"));
  EXPECT_FALSE(CreateCpuBackend(nullptr, {}).ok());
}

}  // namespace
}  // namespace spqr
