// Parity of the small kernels the CUDA forward adds (gather_rows.cuh, add.cuh) with their CPU
// twins, on the harness, in two thread orders, outputs poisoned beforehand:
//   GatherRows   bit-exact with cpu::EmbeddingLookup (fp16/bf16 -> fp32 is exact), for each
//                table dtype; an out-of-range index writes NaNs instead of reading outside.
//   AddInPlace   bit-exact with x[i] + y[i] in fp32 (one rounding, the CPU backend's residual).
//   AddBias      bit-exact with the CPU linear's y + float(bias) (one rounding).
#include <cuda_runtime.h>

#include <cmath>
#include <cstring>
#include <optional>
#include <random>
#include <vector>

#include "engine/backend/cpu/embedding.h"
#include "engine/backend/cuda/add.cuh"
#include "engine/backend/cuda/device_buffer.h"
#include "engine/backend/cuda/emu/harness.h"
#include "engine/backend/cuda/gather_rows.cuh"
#include "engine/model/tensor.h"
#include "engine/util/half.h"
#include "gtest/gtest.h"

namespace spqr {
namespace {

std::vector<float> RandomNormal(size_t n, std::mt19937& rng) {
  std::normal_distribution<float> dist(0.0f, 2.0f);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// The values stored as `dtype` (little-endian bytes).
std::vector<uint8_t> Encode(const std::vector<float>& values, DType dtype) {
  std::vector<uint8_t> bytes(values.size() * DTypeSize(dtype));
  for (size_t i = 0; i < values.size(); ++i) {
    if (dtype == DType::kF32) {
      std::memcpy(&bytes[4 * i], &values[i], 4);
    } else {
      const uint16_t h = dtype == DType::kF16 ? F32ToF16(values[i]) : F32ToBf16(values[i]);
      std::memcpy(&bytes[2 * i], &h, 2);
    }
  }
  return bytes;
}

DeviceBuffer Upload(const void* host, size_t bytes) {
  absl::StatusOr<DeviceBuffer> b = DeviceBuffer::FromHost(host, bytes);
  EXPECT_TRUE(b.ok()) << b.status();
  return b.ok() ? std::move(*b) : DeviceBuffer();
}

DeviceBuffer Poisoned(size_t bytes) {
  absl::StatusOr<DeviceBuffer> b = DeviceBuffer::Allocate(bytes);
  EXPECT_TRUE(b.ok()) << b.status();
  if (!b.ok()) return DeviceBuffer();
  EXPECT_TRUE(b->Fill(0xff).ok());
  return std::move(*b);
}

std::vector<float> Download(const DeviceBuffer& b) {
  absl::StatusOr<std::vector<float>> v = b.ToVector<float>();
  EXPECT_TRUE(v.ok()) << v.status();
  return v.ok() ? *v : std::vector<float>();
}

bool SameBits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

class ForwardKernelTest : public ::testing::TestWithParam<emu::ThreadOrder> {
 protected:
  void SetUp() override { scoped_.emplace(emu::Schedule{GetParam(), 0}); }
  std::optional<emu::ScopedSchedule> scoped_;
};

TEST_P(ForwardKernelTest, GatherRowsEqualsCpuEmbeddingLookup) {
  std::mt19937 rng(5);
  const int64_t vocab = 37, cols = 301;  // cols > the block's 256 threads, not a multiple
  const std::vector<int32_t> ids = {36, 0, 5, 5, 17, 2, 36};
  for (DType dtype : {DType::kF16, DType::kBF16, DType::kF32}) {
    SCOPED_TRACE(DTypeName(dtype));
    const std::vector<uint8_t> table_bytes = Encode(RandomNormal(vocab * cols, rng), dtype);
    TensorView table;
    table.dtype = dtype;
    table.shape = {vocab, cols};
    table.data = table_bytes.data();
    table.nbytes = table_bytes.size();
    std::vector<float> want(ids.size() * cols);
    cpu::EmbeddingLookup(table, ids, cols, want.data());

    DeviceBuffer d_table = Upload(table_bytes.data(), table_bytes.size());
    DeviceBuffer d_ids = Upload(ids.data(), ids.size() * sizeof(int32_t));
    DeviceBuffer d_out = Poisoned(want.size() * sizeof(float));
    GatherRowsParams p;
    p.table = d_table.data();
    p.table_dtype = dtype;
    p.table_rows = vocab;
    p.indices = d_ids.as<int32_t>();
    p.output = d_out.as<float>();
    p.rows = static_cast<int64_t>(ids.size());
    p.cols = cols;
    ASSERT_TRUE(LaunchGatherRows(p, nullptr).ok());
    EXPECT_TRUE(SameBits(Download(d_out), want));
  }
}

TEST_P(ForwardKernelTest, GatherRowsWritesNanForAnIndexOutsideTheTable) {
  const std::vector<float> table = {1, 2, 3, 4};  // [2, 2]
  const std::vector<int32_t> ids = {1, 2, -1};
  DeviceBuffer d_table = Upload(table.data(), table.size() * sizeof(float));
  DeviceBuffer d_ids = Upload(ids.data(), ids.size() * sizeof(int32_t));
  DeviceBuffer d_out = Poisoned(6 * sizeof(float));
  GatherRowsParams p{d_table.data(), DType::kF32, 2, d_ids.as<int32_t>(), d_out.as<float>(), 3, 2};
  ASSERT_TRUE(LaunchGatherRows(p, nullptr).ok());
  const std::vector<float> got = Download(d_out);
  EXPECT_EQ(got[0], 3.0f);
  EXPECT_EQ(got[1], 4.0f);
  for (int i = 2; i < 6; ++i) EXPECT_TRUE(std::isnan(got[i])) << i;
}

TEST_P(ForwardKernelTest, AddInPlaceAndBiasEqualTheCpuArithmetic) {
  std::mt19937 rng(9);
  const int64_t rows = 3, cols = 517;
  std::vector<float> x = RandomNormal(rows * cols, rng);
  const std::vector<float> y = RandomNormal(rows * cols, rng);
  std::vector<float> want = x;
  for (size_t i = 0; i < want.size(); ++i) want[i] = want[i] + y[i];
  DeviceBuffer d_x = Upload(x.data(), x.size() * sizeof(float));
  DeviceBuffer d_y = Upload(y.data(), y.size() * sizeof(float));
  ASSERT_TRUE(LaunchAddInPlace({d_x.as<float>(), d_y.as<float>(), rows * cols}, nullptr).ok());
  EXPECT_TRUE(SameBits(Download(d_x), want));

  for (DType dtype : {DType::kF16, DType::kBF16, DType::kF32}) {
    SCOPED_TRACE(DTypeName(dtype));
    const std::vector<uint8_t> bias_bytes = Encode(RandomNormal(cols, rng), dtype);
    TensorView bias_view;
    bias_view.dtype = dtype;
    std::vector<float> bias(cols);
    for (int64_t c = 0; c < cols; ++c) {
      uint16_t h = 0;
      if (dtype == DType::kF32) {
        std::memcpy(&bias[c], &bias_bytes[4 * c], 4);
      } else {
        std::memcpy(&h, &bias_bytes[2 * c], 2);
        bias[c] = dtype == DType::kF16 ? F16ToF32(h) : Bf16ToF32(h);
      }
    }
    std::vector<float> out = y;
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t c = 0; c < cols; ++c) out[r * cols + c] += bias[c];
    }
    DeviceBuffer d_out = Upload(y.data(), y.size() * sizeof(float));
    DeviceBuffer d_bias = Upload(bias_bytes.data(), bias_bytes.size());
    ASSERT_TRUE(LaunchAddBias({d_out.as<float>(), d_bias.data(), dtype, rows, cols}, nullptr).ok());
    EXPECT_TRUE(SameBits(Download(d_out), out));
  }
}

TEST(ForwardKernelArgsTest, BadArgumentsAreRefusedNamingTheField) {
  GatherRowsParams g;
  g.rows = 1;
  g.cols = 4;
  g.table_rows = 2;
  absl::Status st = LaunchGatherRows(g, nullptr);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("table is null"), std::string::npos) << st;
  AddBiasParams b;
  b.rows = 70000;
  b.cols = 1;
  st = LaunchAddBias(b, nullptr);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("rows"), std::string::npos) << st;
}

INSTANTIATE_TEST_SUITE_P(Orders, ForwardKernelTest,
                         ::testing::Values(emu::ThreadOrder::kForward, emu::ThreadOrder::kReverse));

}  // namespace
}  // namespace spqr
