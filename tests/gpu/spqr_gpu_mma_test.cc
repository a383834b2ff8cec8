// The fused tensor-core SpQR kernel (LaunchSpqrGpuLinear's kMma path, spqr_gpu_mma_kernel.cuh)
// against the format's CPU product (SpqrMatmul), with the bound stated in spqr_gpu_linear.cuh
// (the one-FMA weight's e_j plus fp16 rounding of weights and inputs, fp32 accumulation), natively
// on a device and on the CPU harness (the emu.* suite, shuffled thread order). Shapes are small
// (the harness runs every thread as a fiber) and odd: m = 37 is not a multiple of the 16-row
// warp tile nor of the 128-row block, n = 448 is 3.5 lane chunks (the kernel's K step is one
// 128-column chunk; the format itself requires n % beta1 == 0). Every configuration the kernel
// serves is covered (wbits 2/3/4 x beta1 8/16/32/64 x 3-bit/16-bit statistics, 4-bit statistics,
// beta1 = n), batch 1..33 across them, K split in 1 and several parts, one batch of 200 tokens
// (four 64-token blocks, the last partial), n = 11008 (a last split of one chunk) and 32-bit
// outlier columns.
//
// Planted-bug check (done by hand, docs/gpu-performance.md): swapping the A fragment registers
// a[1] and a[2] in SpqrGpuMmaKernel, or loading B from column 8 t + s + 1, makes every case here
// fail by orders of magnitude over the bound.
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "engine/backend/cuda/cublas_gemm.h"
#include "engine/backend/cuda/spqr_gpu_layout.h"
#include "engine/backend/cuda/spqr_gpu_linear.cuh"
#include "gtest/gtest.h"
#include "tests/gpu/cuda_test_support.h"
#include "tests/gpu/spqr_gpu_checks.h"
#include "tests/gpu/spqr_random_layer.h"

namespace spqr {
namespace {

using testing::CheckLinear;
using testing::RandomLayerSpec;

std::vector<RandomLayerSpec> KernelConfigs() {
  std::vector<RandomLayerSpec> specs;
  for (int wbits : {2, 3, 4}) {
    for (int beta1 : {8, 16, 32, 64}) {
      for (int stats : {3, 16}) specs.push_back({37, 448, wbits, beta1, 16, stats, 0.01});
    }
  }
  specs.push_back({37, 448, 3, 16, 5, 4, 0.02});   // 4-bit statistics, beta2 5
  specs.push_back({21, 96, 4, 96, 3, 3, 0.05});    // beta1 = n (one group per row), n < a chunk
  specs.push_back({45, 1024, 3, 8, 64, 3, 0.01});  // the ~3.9-bit preset w3 8/64
  return specs;
}

class SpqrGpuMmaTest : public ::testing::TestWithParam<int> {};

TEST_P(SpqrGpuMmaTest, MatchesFormatProductWithinBound) {
  SPQR_SKIP_WITHOUT_CUDA_DEVICE();
  const int index = GetParam();
  const RandomLayerSpec spec = KernelConfigs()[index];
  SCOPED_TRACE(::testing::PrintToString(spec));
  const uint32_t seed = testing::FreshSeed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937 rng(seed);
  const PackedSpqrLayer layer = testing::RandomSpqrLayer(spec, rng);
  absl::StatusOr<SpqrGpuDeviceLayer> device = SpqrGpuDeviceLayer::FromPacked(layer, "random");
  ASSERT_TRUE(device.ok()) << device.status();
  absl::StatusOr<CublasHandle> cublas = CublasHandle::Create(nullptr);
  ASSERT_TRUE(cublas.ok()) << cublas.status();
  // Batch 1..33 over the configurations: each takes four, rotating, in 1 and in the rule's splits.
  for (int64_t batch : {1 + index % 8, 9 + (index + 3) % 8, 17 + (index + 5) % 8, 25 + index % 9}) {
    CheckLinear(layer, *device, *cublas, batch, rng, SpqrGpuPath::kMma, batch % 2 ? 1 : 0);
  }
}

INSTANTIATE_TEST_SUITE_P(Configs, SpqrGpuMmaTest,
                         ::testing::Range(0, static_cast<int>(KernelConfigs().size())),
                         [](const ::testing::TestParamInfo<int>& info) {
                           std::string name = ::testing::PrintToString(KernelConfigs()[info.param]);
                           for (char& c : name) c = std::isalnum(c) ? c : '_';
                           return name;
                         });

TEST(SpqrGpuMmaShapesTest, LargeBatchWideLayersAndSplits) {
  SPQR_SKIP_WITHOUT_CUDA_DEVICE();
  const uint32_t seed = testing::FreshSeed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937 rng(seed);
  absl::StatusOr<CublasHandle> cublas = CublasHandle::Create(nullptr);
  ASSERT_TRUE(cublas.ok()) << cublas.status();
  {  // 200 tokens: four 64-token blocks, the last one partial; K in 1 and 3 splits
    const PackedSpqrLayer layer = testing::RandomSpqrLayer({37, 448, 3, 16, 16, 3, 0.01}, rng);
    absl::StatusOr<SpqrGpuDeviceLayer> device = SpqrGpuDeviceLayer::FromPacked(layer, "random");
    ASSERT_TRUE(device.ok()) << device.status();
    CheckLinear(layer, *device, *cublas, 200, rng, SpqrGpuPath::kMma, 1);
    CheckLinear(layer, *device, *cublas, 200, rng, SpqrGpuPath::kMma, 3);
  }
  {  // LLaMA-7B down_proj width: 86 chunks; the rule allows n / (32 x 16) = 21 splits, i.e. 18
     // parts of 5 chunks (the last one 1)
    const PackedSpqrLayer layer = testing::RandomSpqrLayer({5, 11008, 3, 16, 16, 3, 0.005}, rng);
    absl::StatusOr<SpqrGpuDeviceLayer> device = SpqrGpuDeviceLayer::FromPacked(layer, "random");
    ASSERT_TRUE(device.ok()) << device.status();
    EXPECT_EQ(SpqrGpuMmaSplits(device->view(), 16), 18);
    CheckLinear(layer, *device, *cublas, 16, rng, SpqrGpuPath::kMma);
    CheckLinear(layer, *device, *cublas, 3, rng, SpqrGpuPath::kMma, 5);
  }
  {  // n > 65535: two-word outlier records
    const PackedSpqrLayer layer = testing::RandomSpqrLayer({2, 65600, 3, 16, 16, 3, 0.001}, rng);
    ASSERT_GT(layer.num_outliers(), 0);
    absl::StatusOr<SpqrGpuDeviceLayer> device = SpqrGpuDeviceLayer::FromPacked(layer, "random");
    ASSERT_TRUE(device.ok()) << device.status();
    CheckLinear(layer, *device, *cublas, 9, rng, SpqrGpuPath::kMma);
  }
}

TEST(SpqrGpuMmaShapesTest, RuleAndErrors) {
  SPQR_SKIP_WITHOUT_CUDA_DEVICE();
  std::mt19937 rng(31);
  const PackedSpqrLayer layer = testing::RandomSpqrLayer({8, 256, 3, 16, 16, 3, 0.0}, rng);
  absl::StatusOr<SpqrGpuDeviceLayer> device = SpqrGpuDeviceLayer::FromPacked(layer, "random");
  ASSERT_TRUE(device.ok()) << device.status();
  const SpqrGpuLayerView& v = device->view();
  EXPECT_EQ(ChooseSpqrGpuPath(v, kSpqrGpuDecodeMaxBatch), SpqrGpuPath::kDecode);
  EXPECT_EQ(ChooseSpqrGpuPath(v, kSpqrGpuDecodeMaxBatch + 1), SpqrGpuPath::kMma);
  EXPECT_EQ(ChooseSpqrGpuPath(v, kSpqrGpuMmaMaxBatch), SpqrGpuPath::kMma);
  EXPECT_EQ(ChooseSpqrGpuPath(v, kSpqrGpuMmaMaxBatch + 1), SpqrGpuPath::kDequantGemm);
  // Splits: 2 lane chunks allow one split of >= 2 chunks; a forced count is capped at the chunks.
  EXPECT_EQ(SpqrGpuMmaSplits(v, 16), 1);
  EXPECT_EQ(SpqrGpuMmaSplits(v, 16, 7), 2);

  // wbits 6: the kernel does not serve it; the error names the op and the path.
  const PackedSpqrLayer w6 = testing::RandomSpqrLayer({8, 64, 6, 16, 16, 3, 0.0}, rng);
  absl::StatusOr<SpqrGpuDeviceLayer> d6 = SpqrGpuDeviceLayer::FromPacked(w6, "random");
  ASSERT_TRUE(d6.ok()) << d6.status();
  DeviceBuffer x = testing::Poisoned(64 * 4), y = testing::Poisoned(8 * 4);
  DeviceBuffer ws = testing::Poisoned(1 << 16);
  SpqrGpuLinearParams p;
  p.layer = d6->view();
  p.x = x.as<float>();
  p.y = y.as<float>();
  p.batch = 20;
  p.workspace = ws.data();
  p.workspace_bytes = 1 << 16;
  p.path = SpqrGpuPath::kMma;
  const absl::Status s = LaunchSpqrGpuLinear(p, nullptr);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("LaunchSpqrGpuLinear"), std::string::npos) << s;
  EXPECT_NE(s.message().find("tensor-core path"), std::string::npos) << s;
}

}  // namespace
}  // namespace spqr
