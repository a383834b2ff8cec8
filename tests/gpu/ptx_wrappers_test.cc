// The PTX wrappers (engine/backend/cuda/ptx.cuh) on the device against their host references:
// on a GPU this checks that the inline PTX computes what the CPU harness assumes; on the harness
// it runs the references through a launch. Skipped with the reason when no usable device is
// present.
#include <cuda_runtime.h>

#include <cmath>
#include <random>
#include <vector>

#include "engine/backend/cuda/device_buffer.h"
#include "engine/backend/cuda/ptx.cuh"
#include "engine/util/half.h"
#include "gtest/gtest.h"
#include "tests/gpu/cuda_test_support.h"
#include "tests/gpu/ptx_probe.h"

namespace spqr {
namespace {

TEST(PtxWrappersTest, DeviceInstructionsMatchHostReferences) {
  SPQR_SKIP_WITHOUT_CUDA_DEVICE();
  constexpr int kN = 1000;
  constexpr int kOutputs = 5;
  std::mt19937 rng(testing::FreshSeed());
  std::vector<uint32_t> in(4 * kN);
  for (uint32_t& v : in) v = rng();
  absl::StatusOr<DeviceBuffer> d_in = DeviceBuffer::FromVector(in);
  ASSERT_TRUE(d_in.ok()) << d_in.status();
  absl::StatusOr<DeviceBuffer> d_out = DeviceBuffer::Allocate(kOutputs * kN * sizeof(uint32_t));
  ASSERT_TRUE(d_out.ok()) << d_out.status();
  testing::LaunchPtxProbe(d_in->as<uint32_t>(), d_out->as<uint32_t>(), kN);
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  absl::StatusOr<std::vector<uint32_t>> out = d_out->ToVector<uint32_t>();
  ASSERT_TRUE(out.ok()) << out.status();
  for (int i = 0; i < kN; ++i) {
    const uint32_t a = in[4 * i], b = in[4 * i + 1], c = in[4 * i + 2], s = in[4 * i + 3];
    const uint32_t* o = out->data() + kOutputs * i;
    ASSERT_EQ(o[0], (a & b) | c) << i;
    ASSERT_EQ(o[1], a ^ b ^ c) << i;
    ASSERT_EQ(o[2], (a & b) | (~a & c)) << i;
    ASSERT_EQ(o[3], Prmt(a, b, s & 0x7777u)) << i;  // host reference
    ASSERT_EQ(o[4], Prmt(a, b, s)) << i;
  }
}

TEST(PtxWrappersTest, CpAsyncCopiesATileThroughSharedMemory) {
  SPQR_SKIP_WITHOUT_CUDA_DEVICE();
  std::vector<int> in(256);
  for (int i = 0; i < 256; ++i) in[i] = 1000 + 7 * i;
  absl::StatusOr<DeviceBuffer> d_in = DeviceBuffer::FromVector(in);
  ASSERT_TRUE(d_in.ok()) << d_in.status();
  absl::StatusOr<DeviceBuffer> d_out = DeviceBuffer::Allocate(256 * sizeof(int));
  ASSERT_TRUE(d_out.ok()) << d_out.status();
  testing::LaunchCpAsyncProbe(d_in->as<int>(), d_out->as<int>());
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  absl::StatusOr<std::vector<int>> out = d_out->ToVector<int>();
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(*out, in);
}

// ldmatrix + mma against a double-precision product: checks the fragment layouts ptx.cuh
// documents (on a GPU, the hardware's; on the harness, its reference's consistency).
TEST(PtxWrappersTest, LdMatrixAndMmaComputeATileProduct) {
  SPQR_SKIP_WITHOUT_CUDA_DEVICE();
  std::mt19937 rng(testing::FreshSeed());
  std::uniform_real_distribution<float> u(-2.0f, 2.0f);
  std::vector<uint16_t> a(256), bt(128);
  std::vector<float> af(256), btf(128), c(128);
  for (int i = 0; i < 256; ++i) af[i] = F16ToF32(a[i] = F32ToF16(u(rng)));
  for (int i = 0; i < 128; ++i) btf[i] = F16ToF32(bt[i] = F32ToF16(u(rng)));
  for (float& v : c) v = u(rng);
  absl::StatusOr<DeviceBuffer> d_a = DeviceBuffer::FromVector(a);
  absl::StatusOr<DeviceBuffer> d_bt = DeviceBuffer::FromVector(bt);
  absl::StatusOr<DeviceBuffer> d_c = DeviceBuffer::FromVector(c);
  absl::StatusOr<DeviceBuffer> d_d = DeviceBuffer::Allocate(128 * sizeof(float));
  ASSERT_TRUE(d_a.ok() && d_bt.ok() && d_c.ok() && d_d.ok());
  ASSERT_TRUE(d_d->Fill(0xff).ok());
  testing::LaunchMmaProbe(d_a->as<uint16_t>(), d_bt->as<uint16_t>(), d_c->as<float>(),
                          d_d->as<float>());
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  absl::StatusOr<std::vector<float>> d = d_d->ToVector<float>();
  ASSERT_TRUE(d.ok()) << d.status();
  for (int m = 0; m < 16; ++m) {
    for (int n = 0; n < 8; ++n) {
      double want = c[m * 8 + n], magnitude = std::abs(want);
      for (int k = 0; k < 16; ++k) {
        want += double{af[m * 16 + k]} * btf[n * 16 + k];
        magnitude += std::abs(double{af[m * 16 + k]} * btf[n * 16 + k]);
      }
      // fp32 accumulation of 17 terms, in whatever order and rounding the tensor core uses.
      EXPECT_NEAR((*d)[m * 8 + n], want, 17 * std::ldexp(magnitude, -22)) << m << "," << n;
    }
  }
}

}  // namespace
}  // namespace spqr
