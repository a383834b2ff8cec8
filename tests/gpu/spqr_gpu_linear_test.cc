// The GPU SpQR layout and kernels (spqr_gpu_layout.h, spqr_gpu_linear.cuh) natively on a device
// (also run on the CPU harness by the emu.* suite): the dequantize kernel equals the format's
// decoder bit for bit, and LaunchSpqrGpuLinear matches SpqrMatmul within the documented bounds on
// both paths (decode up to batch 16, dequantize + cuBLAS above), on odd shapes including
// n = 11008. The harness-only twin, tests/cuda_emu/spqr_gpu_test.cc, covers more configurations in
// two thread orders. Skipped with the reason without a device.
#include "engine/backend/cuda/spqr_gpu_linear.cuh"

#include <cstring>

#include "engine/backend/cuda/cublas_gemm.h"
#include "engine/backend/cuda/spqr_gpu_layout.h"
#include "gtest/gtest.h"
#include "tests/gpu/cuda_test_support.h"
#include "tests/gpu/spqr_gpu_checks.h"
#include "tests/gpu/spqr_random_layer.h"

namespace spqr {
namespace {

using testing::RandomLayerSpec;

class SpqrGpuLinearTest : public ::testing::TestWithParam<RandomLayerSpec> {};

TEST_P(SpqrGpuLinearTest, DequantizeIsBitExactAndLinearWithinBounds) {
  SPQR_SKIP_WITHOUT_CUDA_DEVICE();
  const RandomLayerSpec spec = GetParam();
  const uint32_t seed = testing::FreshSeed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937 rng(seed);
  const PackedSpqrLayer layer = testing::RandomSpqrLayer(spec, rng);
  absl::StatusOr<SpqrGpuDeviceLayer> device = SpqrGpuDeviceLayer::FromPacked(layer, "random");
  ASSERT_TRUE(device.ok()) << device.status();

  const std::vector<float> want = testing::PermutedReference(layer);
  DeviceBuffer out = testing::Poisoned(want.size() * sizeof(float));
  ASSERT_TRUE(LaunchSpqrGpuDequantize(device->view(), out.data(), DType::kF32, nullptr).ok());
  const std::vector<float> got = testing::Download<float>(out);
  ASSERT_EQ(got.size(), want.size());
  EXPECT_EQ(std::memcmp(got.data(), want.data(), got.size() * 4), 0);

  absl::StatusOr<CublasHandle> cublas = CublasHandle::Create(nullptr);
  ASSERT_TRUE(cublas.ok()) << cublas.status();
  for (int64_t batch : {1, 2, 5, 16, 17, 33}) {
    testing::CheckLinear(layer, *device, *cublas, batch, rng);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Configs, SpqrGpuLinearTest,
    ::testing::Values(RandomLayerSpec{37, 256, 3, 16, 16, 3, 0.01},    // w3 16/16, odd m
                      RandomLayerSpec{45, 1024, 3, 8, 64, 3, 0.01},    // w3 8/64
                      RandomLayerSpec{33, 512, 4, 16, 16, 3, 0.003},   // w4 16/16
                      RandomLayerSpec{19, 384, 2, 32, 7, 16, 0.0},     // w2, fp16 statistics
                      RandomLayerSpec{7, 11008, 3, 16, 16, 3, 0.005},  // LLaMA down_proj width
                      RandomLayerSpec{7, 40, 6, 8, 4, 5, 0.05}));      // generic path only

}  // namespace
}  // namespace spqr
