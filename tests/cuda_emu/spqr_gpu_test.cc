// The GPU SpQR layout and kernels (spqr_gpu_layout.h, spqr_gpu_linear.cuh) on the CPU harness
// (docs/cuda-harness.md), each kernel test in two thread orders (forward, reverse):
//   - the repacked layout decodes (host decoder and device dequantize kernel) bit for bit to the
//     format's DequantizeSpqrLayer, for every kind of configuration the quantizer writes (wbits
//     2/3/4, beta1 8/16/32/64/per-row, beta2 1..64, 3/4-bit and fp16 statistics, with and without
//     outliers, odd m, n = 11008, 32-bit outlier columns) and for the generic ones (wbits 5..8,
//     beta1 not a multiple of 8);
//   - the same for "fp16 arithmetic" layers (the format's variant for spqr-convert's imports),
//     which take the decode kernel up to batch 4 (exact weights: one-hot inputs give the decoded
//     weights bit for bit) and dequantize + cuBLAS above, never the tensor-core kernel;
//   - the layout's bytes stay within 3 % of the format's own payload;
//   - LaunchSpqrGpuLinear matches the format's CPU product (SpqrMatmul) within the bounds stated in
//     spqr_gpu_linear.cuh, for batch 1..33 (the rule: decode kernel up to 4, tensor cores 5..128,
//     dequantize + cuBLAS above; ChooseSpqrGpuPath).
#include <cuda_runtime.h>

#include <cmath>
#include <cstring>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "engine/backend/cuda/cublas_gemm.h"
#include "engine/backend/cuda/device_buffer.h"
#include "engine/backend/cuda/emu/harness.h"
#include "engine/backend/cuda/spqr_gpu_layout.h"
#include "engine/backend/cuda/spqr_gpu_linear.cuh"
#include "engine/format/spqr_layer.h"
#include "engine/format/spqr_matmul.h"
#include "engine/util/half.h"
#include "gtest/gtest.h"
#include "tests/gpu/spqr_gpu_checks.h"
#include "tests/gpu/spqr_random_layer.h"

namespace spqr {
namespace {

using testing::CheckLinear;
using testing::Download;
using testing::PermutedReference;
using testing::Poisoned;
using testing::RandomLayerSpec;

// Small shapes (the harness runs every thread as a fiber), one n = 11008 case with few rows, one
// with 32-bit outlier columns.
const RandomLayerSpec kLayers[] = {
    {37, 256, 3, 16, 16, 3, 0.01},        // w3 16/16, m % beta2 != 0, m not a multiple of any tile
    {19, 384, 2, 8, 7, 3, 0.0},           // w2 8/7, no outliers
    {33, 512, 4, 32, 64, 3, 0.02},        // w4 32/64
    {21, 640, 3, 64, 5, 4, 0.01},         // beta1 64, 4-bit statistics
    {13, 320, 4, 16, 1, 16, 0.05},        // fp16 statistics
    {9, 96, 3, 96, 3, 16, 0.1},           // per-row group (beta1 = n), n < one chunk
    {40, 1024, 3, 8, 64, 3, 0.005},       // the ~3.9-bit preset w3 8/64
    {5, 11008, 3, 16, 16, 3, 0.003},      // LLaMA-7B down_proj width: 2 full tiles + 22 chunks
    {7, 40, 6, 8, 4, 5, 0.05},            // wbits 6: generic (dequantize + GEMM) path only
    {5, 60, 3, 12, 2, 3, 0.05},           // beta1 12: generic path only
    {37, 256, 3, 16, 16, 3, 0.03, true},  // "fp16 arithmetic": dequantize + GEMM at every batch
    {13, 320, 4, 16, 1, 16, 0.05, true},
};
const RandomLayerSpec kWideLayer = {2, 65600, 3, 16, 16, 3, 0.001};  // 32-bit outlier columns

// Host-side: no kernels involved.
TEST(SpqrGpuLayoutTest, HostDecodeIsBitExactForEveryConfiguration) {
  std::mt19937 rng(21);
  std::vector<RandomLayerSpec> specs(std::begin(kLayers), std::end(kLayers));
  specs.push_back(kWideLayer);
  for (int wbits : {2, 3, 4, 5, 8}) {
    for (int beta1 : {8, 16, 32, 64}) {
      for (int stats : {3, 16}) {
        specs.push_back({11, 192, wbits, beta1, beta1 == 8 ? 64 : 16, stats, 0.02});
      }
    }
  }
  for (const RandomLayerSpec& spec : specs) {
    SCOPED_TRACE(::testing::PrintToString(spec));
    const PackedSpqrLayer layer = testing::RandomSpqrLayer(spec, rng);
    absl::StatusOr<SpqrGpuLayout> layout = BuildSpqrGpuLayout(layer, "random");
    ASSERT_TRUE(layout.ok()) << layout.status();
    const std::vector<float> want = PermutedReference(layer);
    EXPECT_EQ(SpqrGpuLayoutBytes(*layout),
              SpqrGpuLayoutBytesFor(spec.m, spec.n, spec.wbits, spec.beta1, spec.beta2,
                                    spec.stats_bits, layer.num_outliers()));
    std::vector<float> row(static_cast<size_t>(spec.n));
    for (int64_t r = 0; r < spec.m; ++r) {
      DecodeSpqrGpuLayoutRow(*layout, r, row.data());
      ASSERT_EQ(std::memcmp(row.data(), want.data() + r * spec.n, spec.n * 4), 0) << "row " << r;
    }
  }
}

TEST(SpqrGpuLayoutTest, RejectsAnInvalidLayerNamingIt) {
  std::mt19937 rng(22);
  PackedSpqrLayer layer = testing::RandomSpqrLayer({4, 32, 3, 16, 16, 3, 0.0}, rng);
  layer.perm[0] = layer.perm[1];
  absl::StatusOr<SpqrGpuLayout> layout = BuildSpqrGpuLayout(layer, "model.layers.0.q_proj");
  ASSERT_FALSE(layout.ok());
  EXPECT_NE(layout.status().message().find("model.layers.0.q_proj"), std::string::npos);
}

// Bytes per weight of the layout against the format's real payload, on LLaMA widths (fewer rows:
// every array but perm scales with m, and perm's share only shrinks with more rows).
TEST(SpqrGpuLayoutTest, BytesWithinThreePercentOfTheFormat) {
  std::mt19937 rng(23);
  for (const RandomLayerSpec& spec : {RandomLayerSpec{64, 4096, 3, 16, 16, 3, 0.005},
                                      RandomLayerSpec{64, 4096, 3, 8, 64, 3, 0.01},
                                      RandomLayerSpec{64, 4096, 4, 16, 16, 3, 0.003},
                                      RandomLayerSpec{32, 11008, 3, 16, 16, 3, 0.005},
                                      RandomLayerSpec{64, 4096, 2, 32, 32, 3, 0.0},
                                      RandomLayerSpec{64, 4096, 4, 128, 1, 16, 0.0}}) {
    SCOPED_TRACE(::testing::PrintToString(spec));
    const PackedSpqrLayer layer = testing::RandomSpqrLayer(spec, rng);
    absl::StatusOr<SpqrGpuLayout> layout = BuildSpqrGpuLayout(layer, "random");
    ASSERT_TRUE(layout.ok()) << layout.status();
    const double params = static_cast<double>(spec.m) * spec.n;
    const double format_bits = SpqrRealBitsPerParameter(layer);
    const double gpu_bits = 8.0 * SpqrGpuLayoutBytes(*layout) / params;
    ::testing::Test::RecordProperty(
        ::testing::PrintToString(spec),
        std::to_string(gpu_bits) + " vs " + std::to_string(format_bits));
    EXPECT_LE(gpu_bits, 1.03 * format_bits) << gpu_bits << " vs " << format_bits;
    EXPECT_GE(gpu_bits, 0.97 * format_bits) << gpu_bits << " vs " << format_bits;
  }
}

// Each kernel test runs once per thread order.
class SpqrGpuKernelTest : public ::testing::TestWithParam<emu::ThreadOrder> {
 protected:
  void SetUp() override { scoped_.emplace(emu::Schedule{GetParam(), 0}); }
  std::optional<emu::ScopedSchedule> scoped_;
};

TEST_P(SpqrGpuKernelTest, DequantizeIsBitExactWithFormatDecoder) {
  std::mt19937 rng(24);
  for (const RandomLayerSpec& spec : kLayers) {
    SCOPED_TRACE(::testing::PrintToString(spec));
    const PackedSpqrLayer layer = testing::RandomSpqrLayer(spec, rng);
    const std::vector<float> want = PermutedReference(layer);
    absl::StatusOr<SpqrGpuDeviceLayer> device = SpqrGpuDeviceLayer::FromPacked(layer, "random");
    ASSERT_TRUE(device.ok()) << device.status();
    for (DType dtype : {DType::kF32, DType::kF16}) {
      DeviceBuffer out = Poisoned(want.size() * DTypeSize(dtype));
      ASSERT_TRUE(LaunchSpqrGpuDequantize(device->view(), out.data(), dtype, nullptr).ok());
      if (dtype == DType::kF32) {
        const std::vector<float> got = Download<float>(out);
        ASSERT_EQ(got.size(), want.size());
        for (size_t i = 0; i < got.size(); ++i) {
          ASSERT_EQ(std::memcmp(&got[i], &want[i], 4), 0)
              << "W[" << i / spec.n << "][" << i % spec.n << "] = " << got[i] << ", want "
              << want[i];
        }
      } else {
        const std::vector<uint16_t> got = Download<uint16_t>(out);
        for (size_t i = 0; i < got.size(); ++i) ASSERT_EQ(got[i], F32ToF16(want[i])) << i;
      }
    }
  }
}

TEST_P(SpqrGpuKernelTest, LinearMatchesFormatProductForBatch1To33) {
  std::mt19937 rng(25);
  absl::StatusOr<CublasHandle> cublas = CublasHandle::Create(nullptr);
  ASSERT_TRUE(cublas.ok()) << cublas.status();
  int64_t case_index = 0;
  for (const RandomLayerSpec& spec : kLayers) {
    SCOPED_TRACE(::testing::PrintToString(spec));
    const PackedSpqrLayer layer = testing::RandomSpqrLayer(spec, rng);
    absl::StatusOr<SpqrGpuDeviceLayer> device = SpqrGpuDeviceLayer::FromPacked(layer, "random");
    ASSERT_TRUE(device.ok()) << device.status();
    if (spec.n > 4096) {
      // The wide case: every decode kernel instance once (1, 2, 4, 8, 16) and the GEMM path.
      for (int64_t batch : {1, 2, 3, 7, 16, 17}) CheckLinear(layer, *device, *cublas, batch, rng);
      continue;
    }
    // Every batch 1..33 over the small layers: each layer takes a rotating share.
    for (int64_t batch = 1 + case_index % 3; batch <= 33; batch += 3) {
      CheckLinear(layer, *device, *cublas, batch, rng);
    }
    ++case_index;
  }
}

TEST_P(SpqrGpuKernelTest, WideOutlierColumns) {
  std::mt19937 rng(26);
  absl::StatusOr<CublasHandle> cublas = CublasHandle::Create(nullptr);
  ASSERT_TRUE(cublas.ok()) << cublas.status();
  const PackedSpqrLayer layer = testing::RandomSpqrLayer(kWideLayer, rng);
  ASSERT_GT(layer.num_outliers(), 0);
  absl::StatusOr<SpqrGpuDeviceLayer> device = SpqrGpuDeviceLayer::FromPacked(layer, "random");
  ASSERT_TRUE(device.ok()) << device.status();
  CheckLinear(layer, *device, *cublas, 2, rng);
}

TEST_P(SpqrGpuKernelTest, Fp16ArithmeticLayersTakeDecodeOrDequantizeNeverTensorCores) {
  std::mt19937 rng(28);
  const PackedSpqrLayer layer = testing::RandomSpqrLayer({16, 128, 3, 16, 16, 3, 0.02, true}, rng);
  absl::StatusOr<SpqrGpuDeviceLayer> device = SpqrGpuDeviceLayer::FromPacked(layer, "random");
  ASSERT_TRUE(device.ok()) << device.status();
  EXPECT_EQ(device->view().fp16_arithmetic, 1);
  EXPECT_EQ(ChooseSpqrGpuPath(device->view(), 1), SpqrGpuPath::kDecode);
  EXPECT_EQ(ChooseSpqrGpuPath(device->view(), kSpqrGpuDecodeMaxBatch), SpqrGpuPath::kDecode);
  EXPECT_EQ(ChooseSpqrGpuPath(device->view(), 8), SpqrGpuPath::kDequantGemm);
  EXPECT_EQ(ChooseSpqrGpuPath(device->view(), 300), SpqrGpuPath::kDequantGemm);
  DeviceBuffer x = Poisoned(8 * 128 * 4), y = Poisoned(8 * 16 * 4), ws = Poisoned(1 << 16);
  for (SpqrGpuPath path : {SpqrGpuPath::kDecode, SpqrGpuPath::kMma}) {
    SpqrGpuLinearParams p;
    p.layer = device->view();
    p.x = x.as<float>();
    p.y = y.as<float>();
    p.batch = 8;  // above the fp16-arithmetic decode instances
    p.workspace = ws.data();
    p.workspace_bytes = 1 << 16;
    p.path = path;
    const absl::Status s = LaunchSpqrGpuLinear(p, nullptr);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_NE(s.message().find("fp16 arithmetic"), std::string::npos) << s;
  }
}

// The decode kernel's fp16-arithmetic instances on one-hot inputs: y[b][r] = W_hat[r][c_b] bit for
// bit (one nonzero product per row; an outlier adds h(w + v) - w to w), so every decoded weight
// of the chosen columns, outliers first, must be the format's.
TEST_P(SpqrGpuKernelTest, Fp16ArithmeticDecodeKernelGivesTheDecodedWeights) {
  std::mt19937 rng(29);
  for (const RandomLayerSpec& spec : {RandomLayerSpec{37, 256, 3, 16, 16, 3, 0.03, true},
                                      RandomLayerSpec{13, 320, 4, 32, 8, 16, 0.05, true},
                                      RandomLayerSpec{21, 384, 2, 8, 16, 4, 0.03, true}}) {
    SCOPED_TRACE(::testing::PrintToString(spec));
    const PackedSpqrLayer layer = testing::RandomSpqrLayer(spec, rng);
    absl::StatusOr<std::vector<float>> dense = DequantizeSpqrLayer(layer);
    ASSERT_TRUE(dense.ok()) << dense.status();
    absl::StatusOr<SpqrGpuDeviceLayer> device = SpqrGpuDeviceLayer::FromPacked(layer, "random");
    ASSERT_TRUE(device.ok()) << device.status();
    const int64_t m = spec.m, n = spec.n;
    for (int64_t batch : {1, 2, 3, 4}) {
      ASSERT_GE(layer.num_outliers(), batch);
      std::vector<float> x(static_cast<size_t>(batch * n), 0.0f);
      std::vector<int64_t> cols;
      for (int64_t b = 0; b < batch; ++b) {
        const int64_t k = (b * 7 + batch) % layer.num_outliers();
        cols.push_back(layer.perm[layer.outlier_col(k)]);  // the outlier's original column
        x[b * n + cols.back()] = 1.0f;
      }
      DeviceBuffer d_x = testing::Upload(x);
      DeviceBuffer d_y = Poisoned(batch * m * sizeof(float));
      const int64_t ws_bytes =
          SpqrGpuLinearWorkspaceBytes(device->view(), batch, SpqrGpuPath::kDecode);
      DeviceBuffer ws = Poisoned(static_cast<size_t>(ws_bytes));
      SpqrGpuLinearParams p;
      p.layer = device->view();
      p.x = d_x.as<float>();
      p.y = d_y.as<float>();
      p.batch = batch;
      p.workspace = ws.data();
      p.workspace_bytes = ws_bytes;
      p.path = SpqrGpuPath::kDecode;
      ASSERT_TRUE(LaunchSpqrGpuLinear(p, nullptr).ok());
      const std::vector<float> y = Download<float>(d_y);
      for (int64_t b = 0; b < batch; ++b) {
        for (int64_t r = 0; r < m; ++r) {
          // == on values: a sum of signed zeros may end in either zero.
          ASSERT_EQ(y[b * m + r], (*dense)[r * n + cols[b]])
              << "batch " << batch << " b " << b << " r " << r;
        }
      }
    }
  }
}

TEST_P(SpqrGpuKernelTest, LaunchErrorsNameTheOpAndField) {
  std::mt19937 rng(27);
  const PackedSpqrLayer layer = testing::RandomSpqrLayer({8, 64, 6, 16, 16, 3, 0.0}, rng);
  absl::StatusOr<SpqrGpuDeviceLayer> device = SpqrGpuDeviceLayer::FromPacked(layer, "random");
  ASSERT_TRUE(device.ok()) << device.status();
  DeviceBuffer x = Poisoned(64 * 4), y = Poisoned(8 * 4), ws = Poisoned(1 << 16);
  SpqrGpuLinearParams p;
  p.layer = device->view();
  p.x = x.as<float>();
  p.y = y.as<float>();
  p.batch = 1;
  p.workspace = ws.data();
  p.workspace_bytes = 1 << 16;
  auto expect_error = [&](const SpqrGpuLinearParams& q, const std::string& field) {
    const absl::Status s = LaunchSpqrGpuLinear(q, nullptr);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_NE(s.message().find("LaunchSpqrGpuLinear"), std::string::npos) << s;
    EXPECT_NE(s.message().find(field), std::string::npos) << s;
  };
  expect_error(p, "cublas");  // wbits 6 goes to the GEMM path, which needs a handle
  SpqrGpuLinearParams q = p;
  q.path = SpqrGpuPath::kDecode;
  expect_error(q, "decode path");
  q = p;
  q.x = nullptr;
  expect_error(q, "x");
  q = p;
  q.workspace_bytes = 16;
  expect_error(q, "workspace_bytes");
  q = p;
  q.layer.codes = nullptr;
  expect_error(q, "layer.codes");
  q = p;
  q.batch = -1;
  expect_error(q, "batch");
  q = p;
  q.batch = 0;
  EXPECT_TRUE(LaunchSpqrGpuLinear(q, nullptr).ok());
}

INSTANTIATE_TEST_SUITE_P(Orders, SpqrGpuKernelTest,
                         ::testing::Values(emu::ThreadOrder::kForward, emu::ThreadOrder::kReverse),
                         [](const ::testing::TestParamInfo<emu::ThreadOrder>& info) {
                           return info.param == emu::ThreadOrder::kForward ? "forward" : "reverse";
                         });

}  // namespace
}  // namespace spqr
