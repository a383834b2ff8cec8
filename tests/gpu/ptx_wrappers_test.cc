// The PTX wrappers (engine/backend/cuda/ptx.cuh) on the device against their host references:
// on a GPU this checks that the inline PTX computes what the CPU harness assumes; on the harness
// it runs the references through a launch. Skipped with the reason when no usable device is
// present.
#include <cuda_runtime.h>

#include <random>
#include <vector>

#include "engine/backend/cuda/device_buffer.h"
#include "engine/backend/cuda/ptx.cuh"
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

}  // namespace
}  // namespace spqr
