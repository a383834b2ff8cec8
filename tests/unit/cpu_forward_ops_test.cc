// CpuForwardOps (engine/backend/cpu/cpu_forward_ops.h) as a ForwardOps: the step-level buffer ops
// (embedding, logit-row gather, logits read-back) move the right rows, and a buffer or layer that
// does not fit the op is INTERNAL naming the op, never an out-of-bounds access. The arithmetic ops
// are covered by cpu_ops_test and, through RunLlamaForward, by cpu_backend_test.
#include "engine/backend/cpu/cpu_forward_ops.h"

#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace spqr::cpu {
namespace {

using ::testing::HasSubstr;

ModelConfig SmallConfig() {
  ModelConfig c;
  c.vocab_size = 6;
  c.hidden_size = 3;
  c.intermediate_size = 5;
  c.num_hidden_layers = 1;
  c.num_attention_heads = 2;
  c.num_key_value_heads = 1;
  c.head_dim = 2;
  return c;
}

class CpuForwardOpsTest : public ::testing::Test {
 protected:
  CpuForwardOpsTest() {
    for (int i = 0; i < 6 * 3; ++i) table_data_.push_back(static_cast<float>(i) + 0.5f);
    table_.dtype = DType::kF32;
    table_.shape = {6, 3};
    table_.data = table_data_.data();
    table_.nbytes = table_data_.size() * sizeof(float);
  }
  const ModelConfig c_ = SmallConfig();  // before ops_, which reads it when constructed
  std::vector<float> table_data_;
  TensorView table_;
  SpqrTileMap tiles_;
  PagedKvPool pool_{1, 1, 2, 4, 4};
  CpuForwardOps ops_{c_, &tiles_, &pool_, {}};
  const std::vector<int32_t> ids_ = {4, 0, 5, 2};
  const std::vector<int64_t> positions_ = {0, 1, 2, 0};
  const std::vector<int32_t> table0_ = {0}, table1_ = {1};
  const std::vector<StepSequence> seqs_ = {{0, 3, 0, table0_}, {3, 1, 0, table1_}};
  const std::vector<int64_t> logit_rows_ = {3, 0, 2};
};

TEST_F(CpuForwardOpsTest, EmbedGatherAndReadMoveTheRightRows) {
  ASSERT_TRUE(ops_.BeginStep({ids_, positions_, seqs_, logit_rows_}).ok());
  ASSERT_TRUE(ops_.Embed(table_, Act::kX).ok());
  ASSERT_TRUE(ops_.GatherLogitRows(Act::kX, Act::kFinal).ok());
  std::vector<float> out(3 * 3);
  ASSERT_TRUE(ops_.ReadLogits(Act::kFinal, out).ok());
  // Output row i is the embedding of token ids_[logit_rows_[i]].
  for (int i = 0; i < 3; ++i) {
    const int token = ids_[logit_rows_[i]];
    for (int j = 0; j < 3; ++j) EXPECT_EQ(out[i * 3 + j], table_data_[token * 3 + j]) << i;
  }
}

TEST_F(CpuForwardOpsTest, MisfitBuffersAndLayersAreInternalErrorsNamingTheOp) {
  ASSERT_TRUE(ops_.BeginStep({ids_, positions_, seqs_, logit_rows_}).ok());
  LinearTensors wrong;  // 7 inputs, but kH holds hidden = 3 columns
  wrong.in_features = 7;
  wrong.out_features = 4;
  const Projection p[] = {{&wrong, Act::kQ}};
  std::vector<float> small(5);
  const struct {
    absl::Status st;
    const char* op;
  } cases[] = {
      {ops_.Project(Act::kH, p), "cpu Project"},
      {ops_.ReadLogits(Act::kLogits, small), "cpu ReadLogits"},
      {ops_.AddInPlace(Act::kX, Act::kQ), "cpu AddInPlace"},
      {ops_.SwiGlu(Act::kGate, Act::kX, Act::kGate), "cpu SwiGlu"},
      {ops_.Rope(Act::kK, Act::kQ), "cpu Rope"},
      {ops_.StoreKv(1, Act::kK, Act::kV), "cpu StoreKv"},  // the model has one layer
      {ops_.Attention(0, Act::kQ, Act::kQ), "cpu Attention"},
      {ops_.GatherLogitRows(Act::kX, Act::kLogits), "cpu GatherLogitRows"},
      {ops_.RmsNorm(Act::kX, table_, 1e-5f, Act::kH), "cpu RmsNorm"},  // 18 weights for 3
      {ops_.Embed(table_, Act::kFinal), "cpu Embed"},
  };
  for (const auto& c : cases) {
    EXPECT_EQ(c.st.code(), absl::StatusCode::kInternal) << c.op << ": " << c.st;
    EXPECT_THAT(std::string(c.st.message()), HasSubstr(c.op));
  }
}

}  // namespace
}  // namespace spqr::cpu
