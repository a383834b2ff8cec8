// Parity of the CUDA backend's small forward kernels (embedding lookup, row add, row gather) with
// their CPU twins, on the CPU harness, in two thread orders, on odd shapes (columns not a multiple
// of the block width, more than one column block), outputs poisoned beforehand. All three are
// exact conversions or single fp32 additions, so the comparison is bit for bit.
#include <cuda_runtime.h>

#include <cstring>
#include <optional>
#include <random>
#include <vector>

#include "engine/backend/cpu/embedding.h"
#include "engine/backend/cuda/add_rows.cuh"
#include "engine/backend/cuda/device_buffer.h"
#include "engine/backend/cuda/embedding.cuh"
#include "engine/backend/cuda/emu/harness.h"
#include "engine/backend/cuda/gather_rows.cuh"
#include "engine/model/tensor.h"
#include "engine/util/half.h"
#include "gtest/gtest.h"
#include "tests/cuda_emu/emu_test_buffers.h"

namespace spqr {
namespace {

using emu_test::Poisoned;
using emu_test::Upload;

std::vector<float> RandomNormal(size_t n, std::mt19937& rng) {
  return emu_test::RandomNormal(n, 3.0f, rng);
}

std::vector<float> Download(const DeviceBuffer& b) {
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  absl::StatusOr<std::vector<float>> v = b.ToVector<float>();
  EXPECT_TRUE(v.ok()) << v.status();
  return v.ok() ? *v : std::vector<float>();
}

// Bitwise equality (NaN payloads included, so an unwritten poisoned element cannot pass).
void ExpectBitEqual(const std::vector<float>& got, const std::vector<float>& want) {
  ASSERT_EQ(got.size(), want.size());
  int bad = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::memcmp(&got[i], &want[i], sizeof(float)) != 0 && bad++ < 5) {
      ADD_FAILURE() << "[" << i << "] got " << got[i] << " want " << want[i];
    }
  }
  EXPECT_EQ(bad, 0);
}

class ForwardKernelParityTest : public ::testing::TestWithParam<emu::ThreadOrder> {
 protected:
  void SetUp() override { scoped_.emplace(emu::Schedule{GetParam(), 0}); }
  std::optional<emu::ScopedSchedule> scoped_;
};

TEST_P(ForwardKernelParityTest, EmbeddingMatchesCpuLookupForEveryTableType) {
  std::mt19937 rng(21);
  const int64_t vocab = 37, hidden = 300;  // two column blocks, the second partial
  const std::vector<int32_t> ids = {0, 36, 5, 5, 17, 2, 36};
  const std::vector<float> values = RandomNormal(vocab * hidden, rng);
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
    SCOPED_TRACE(DTypeName(dtype));
    std::vector<uint16_t> half(values.size());
    for (size_t i = 0; i < values.size(); ++i) {
      half[i] = dtype == DType::kF16 ? F32ToF16(values[i]) : F32ToBf16(values[i]);
    }
    TensorView table;
    table.dtype = dtype;
    table.shape = {vocab, hidden};
    table.data = dtype == DType::kF32 ? static_cast<const void*>(values.data()) : half.data();
    table.nbytes = values.size() * DTypeSize(dtype);
    std::vector<float> want(ids.size() * hidden);
    cpu::EmbeddingLookup(table, ids, hidden, want.data());

    DeviceBuffer d_table = dtype == DType::kF32 ? Upload(values) : Upload(half);
    DeviceBuffer d_ids = Upload(ids);
    DeviceBuffer d_out = Poisoned(want.size() * sizeof(float));
    EmbeddingParams p;
    p.table = d_table.data();
    p.table_dtype = dtype;
    p.ids = d_ids.as<int32_t>();
    p.output = d_out.as<float>();
    p.rows = static_cast<int64_t>(ids.size());
    p.hidden = hidden;
    ASSERT_TRUE(LaunchEmbedding(p, nullptr).ok());
    ExpectBitEqual(Download(d_out), want);
  }
}

TEST_P(ForwardKernelParityTest, AddRowsMatchesResidualAndBiasLoops) {
  std::mt19937 rng(22);
  const int64_t rows = 5, cols = 333, x_stride = 340;
  const std::vector<float> x = RandomNormal(rows * x_stride, rng);
  const std::vector<float> y = RandomNormal(rows * cols, rng);
  const std::vector<float> bias = RandomNormal(cols, rng);
  // Residual (y row by row), then bias (one row for all): the CPU backend's fp32 loops.
  std::vector<float> want = x;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) want[r * x_stride + c] += y[r * cols + c];
  }
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) want[r * x_stride + c] += bias[c];
  }
  DeviceBuffer d_x = Upload(x);
  DeviceBuffer d_y = Upload(y);
  DeviceBuffer d_bias = Upload(bias);
  AddRowsParams p;
  p.x = d_x.as<float>();
  p.y = d_y.as<float>();
  p.rows = rows;
  p.cols = cols;
  p.x_row_stride = x_stride;
  p.y_row_stride = cols;
  ASSERT_TRUE(LaunchAddRows(p, nullptr).ok());
  p.y = d_bias.as<float>();
  p.y_row_stride = 0;
  ASSERT_TRUE(LaunchAddRows(p, nullptr).ok());
  ExpectBitEqual(Download(d_x), want);  // padding columns untouched too
}

TEST_P(ForwardKernelParityTest, GatherRowsCopiesTheChosenRows) {
  std::mt19937 rng(23);
  const int64_t in_rows = 9, cols = 257;
  const std::vector<float> in = RandomNormal(in_rows * cols, rng);
  const std::vector<int32_t> rows = {8, 0, 3, 3};
  std::vector<float> want;
  for (int32_t r : rows)
    want.insert(want.end(), in.begin() + r * cols, in.begin() + (r + 1) * cols);
  DeviceBuffer d_in = Upload(in);
  DeviceBuffer d_rows = Upload(rows);
  DeviceBuffer d_out = Poisoned(want.size() * sizeof(float));
  GatherRowsParams p;
  p.input = d_in.as<float>();
  p.rows = d_rows.as<int32_t>();
  p.output = d_out.as<float>();
  p.in_rows = in_rows;
  p.out_rows = static_cast<int64_t>(rows.size());
  p.cols = cols;
  ASSERT_TRUE(LaunchGatherRows(p, nullptr).ok());
  ExpectBitEqual(Download(d_out), want);
}

TEST_P(ForwardKernelParityTest, LaunchersRefuseBadArguments) {
  EmbeddingParams e;
  e.rows = 1;
  e.hidden = 4;
  absl::Status s = LaunchEmbedding(e, nullptr);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("LaunchEmbedding: table is null"), std::string::npos) << s;
  AddRowsParams a;
  float dummy = 0;
  a.x = &dummy;
  a.y = &dummy;
  a.rows = 1;
  a.cols = 8;
  a.x_row_stride = 8;
  a.y_row_stride = 3;  // neither broadcast nor a full row
  s = LaunchAddRows(a, nullptr);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("y_row_stride"), std::string::npos) << s;
  GatherRowsParams g;
  g.out_rows = 2;
  g.cols = 4;
  s = LaunchGatherRows(g, nullptr);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  // rows == 0 is a no-op, even with null pointers.
  EXPECT_TRUE(LaunchEmbedding(EmbeddingParams{.hidden = 4}, nullptr).ok());
}

INSTANTIATE_TEST_SUITE_P(Orders, ForwardKernelParityTest,
                         ::testing::Values(emu::ThreadOrder::kForward, emu::ThreadOrder::kReverse),
                         [](const ::testing::TestParamInfo<emu::ThreadOrder>& info) {
                           return info.param == emu::ThreadOrder::kForward ? "forward" : "reverse";
                         });

}  // namespace
}  // namespace spqr
