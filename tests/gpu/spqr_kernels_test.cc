// GPU tests of the SpQR kernels on the packed format: the device dequantizer must equal the format
// module's reference decoder (DequantizeSpqrLayer) bit for bit, and the GEMV must match a
// double-precision product with W_hat within the fp32 summation bound, for every configuration
// kind the quantizer writes (wbits 2/3/4, beta1 8/16/32/per-row, bilevel 3-bit or fp16
// statistics, outliers incl. 32-bit column ids). Skipped with the reason without a device.
#include <cuda_runtime.h>

#include <cmath>
#include <cstring>

#include "engine/backend/cuda/device_buffer.h"
#include "engine/backend/cuda/spqr_dequantize.cuh"
#include "engine/backend/cuda/spqr_device_layer.h"
#include "engine/backend/cuda/spqr_gemv.cuh"
#include "engine/format/spqr_layer.h"
#include "engine/util/half.h"
#include "gtest/gtest.h"
#include "tests/gpu/cuda_test_support.h"
#include "tests/gpu/spqr_random_layer.h"

namespace spqr {
namespace {

using testing::RandomLayerSpec;

class SpqrKernelTest : public ::testing::TestWithParam<RandomLayerSpec> {};

// Needs no device: the generator must produce layers the format accepts, or the GPU tests below
// would fail at upload for a reason that has nothing to do with the kernels.
TEST_P(SpqrKernelTest, RandomLayerIsValid) {
  std::mt19937 rng(testing::FreshSeed());
  const PackedSpqrLayer layer = testing::RandomSpqrLayer(GetParam(), rng);
  EXPECT_TRUE(ValidateSpqrLayer(layer, "random").ok()) << ValidateSpqrLayer(layer, "random");
}

TEST_P(SpqrKernelTest, DequantizeIsBitExact) {
  SPQR_SKIP_WITHOUT_CUDA_DEVICE();
  const RandomLayerSpec spec = GetParam();
  const uint32_t seed = testing::FreshSeed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937 rng(seed);
  const PackedSpqrLayer layer = testing::RandomSpqrLayer(spec, rng);
  absl::StatusOr<std::vector<float>> want = DequantizeSpqrLayer(layer);
  ASSERT_TRUE(want.ok()) << want.status();
  absl::StatusOr<SpqrDeviceLayer> device = SpqrDeviceLayer::Upload(layer, "random");
  ASSERT_TRUE(device.ok()) << device.status();

  for (DType dtype : {DType::kF32, DType::kF16}) {
    SCOPED_TRACE(std::string(DTypeName(dtype)));
    absl::StatusOr<DeviceBuffer> out = DeviceBuffer::Allocate(want->size() * DTypeSize(dtype));
    ASSERT_TRUE(out.ok()) << out.status();
    ASSERT_TRUE(out->Fill(0xff).ok());  // NaN / 0xffff: an unwritten element cannot match
    SpqrDequantizeParams p;
    p.layer = device->view();
    p.output = out->data();
    p.output_dtype = dtype;
    const absl::Status status = LaunchSpqrDequantize(p, nullptr);
    ASSERT_TRUE(status.ok()) << status;
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    int mismatches = 0;
    if (dtype == DType::kF32) {
      absl::StatusOr<std::vector<float>> got = out->ToVector<float>();
      ASSERT_TRUE(got.ok());
      for (size_t i = 0; i < want->size(); ++i) {
        if (std::memcmp(&(*got)[i], &(*want)[i], 4) != 0 && ++mismatches <= 5) {
          ADD_FAILURE() << "W[" << i / spec.n << "][" << i % spec.n << "] = " << (*got)[i]
                        << ", reference " << (*want)[i];
        }
      }
    } else {
      absl::StatusOr<std::vector<uint16_t>> got = out->ToVector<uint16_t>();
      ASSERT_TRUE(got.ok());
      for (size_t i = 0; i < want->size(); ++i) {
        if ((*got)[i] != F32ToF16((*want)[i]) && ++mismatches <= 5) {
          ADD_FAILURE() << "W[" << i / spec.n << "][" << i % spec.n << "] = 0x" << std::hex
                        << (*got)[i] << ", reference 0x" << F32ToF16((*want)[i]);
        }
      }
    }
    EXPECT_EQ(mismatches, 0);
  }
}

TEST_P(SpqrKernelTest, GemvMatchesDenseProduct) {
  SPQR_SKIP_WITHOUT_CUDA_DEVICE();
  const RandomLayerSpec spec = GetParam();
  const uint32_t seed = testing::FreshSeed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937 rng(seed);
  const PackedSpqrLayer layer = testing::RandomSpqrLayer(spec, rng);
  absl::StatusOr<std::vector<float>> w = DequantizeSpqrLayer(layer);
  ASSERT_TRUE(w.ok()) << w.status();
  absl::StatusOr<SpqrDeviceLayer> device = SpqrDeviceLayer::Upload(layer, "random");
  ASSERT_TRUE(device.ok()) << device.status();

  for (int64_t batch : {1, 3, 8, 13}) {
    SCOPED_TRACE(::testing::Message() << "batch " << batch);
    const std::vector<float> x = testing::RandomNormal(batch * spec.n, 1.0f, rng);
    const int64_t y_stride = spec.m + 3;  // padded rows: the gaps must stay untouched
    absl::StatusOr<DeviceBuffer> d_x = DeviceBuffer::FromVector(x);
    absl::StatusOr<DeviceBuffer> d_scratch = DeviceBuffer::Allocate(x.size() * sizeof(float));
    absl::StatusOr<DeviceBuffer> d_y = DeviceBuffer::Allocate(batch * y_stride * sizeof(float));
    ASSERT_TRUE(d_x.ok() && d_scratch.ok() && d_y.ok());
    ASSERT_TRUE(d_y->Fill(0xff).ok());
    SpqrGemvParams p;
    p.layer = device->view();
    p.x = d_x->as<float>();
    p.x_perm = d_scratch->as<float>();
    p.y = d_y->as<float>();
    p.batch = batch;
    p.y_stride = y_stride;
    const absl::Status status = LaunchSpqrGemv(p, nullptr);
    ASSERT_TRUE(status.ok()) << status;
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    absl::StatusOr<std::vector<float>> y = d_y->ToVector<float>();
    ASSERT_TRUE(y.ok());
    int failures = 0;
    for (int64_t b = 0; b < batch; ++b) {
      for (int64_t r = 0; r < spec.m; ++r) {
        double want = 0.0;
        double abs_sum = 0.0;
        for (int64_t i = 0; i < spec.n; ++i) {
          const double t = double{(*w)[r * spec.n + i]} * x[b * spec.n + i];
          want += t;
          abs_sum += std::abs(t);
        }
        // The kernel sums dense part and outliers separately: their magnitudes count too.
        for (uint32_t k = layer.outlier_row_offsets[r]; k < layer.outlier_row_offsets[r + 1]; ++k) {
          abs_sum += 2.0 * std::abs(double{F16ToF32(layer.outlier_values[k])} *
                                    x[b * spec.n + layer.perm[layer.outlier_col(k)]]);
        }
        // Decoded weights are exact; fp32 accumulation of n products (FMA or not) in any order
        // stays within n * 2^-24 * sum|w x|; twice that, plus the outliers' separate partial sums.
        const double bound = 2.0 * (spec.n + 64) * std::ldexp(1.0, -24) * abs_sum + 1e-30;
        const double got = (*y)[b * y_stride + r];
        if (!(std::abs(got - want) <= bound) && ++failures <= 5) {
          ADD_FAILURE() << "y[" << b << "][" << r << "] = " << got << ", want " << want;
        }
      }
      for (int64_t r = spec.m; r < y_stride; ++r) {
        EXPECT_TRUE(std::isnan((*y)[b * y_stride + r])) << "padding written at row " << b;
      }
    }
    EXPECT_EQ(failures, 0);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Configs, SpqrKernelTest,
    ::testing::Values(RandomLayerSpec{1, 8, 2, 8, 1, 3, 0.0},          // smallest
                      RandomLayerSpec{37, 96, 3, 16, 16, 3, 0.01},     // w3 16/16, m % beta2 != 0
                      RandomLayerSpec{64, 1024, 3, 8, 64, 3, 0.005},   // w3 8/64
                      RandomLayerSpec{33, 512, 4, 16, 16, 3, 0.02},    // w4 16/16
                      RandomLayerSpec{19, 480, 2, 32, 7, 4, 0.01},     // w2, odd beta2, 4-bit stats
                      RandomLayerSpec{40, 768, 3, 768, 5, 16, 0.003},  // per-row fp16 stats (GPTQ)
                      RandomLayerSpec{50, 320, 4, 32, 1, 16, 0.3},     // dense outliers
                      RandomLayerSpec{4112, 64, 3, 16, 16, 3, 0.01},   // many rows, odd count
                      RandomLayerSpec{3, 65600, 3, 16, 16, 3, 0.001}));  // 32-bit column ids

}  // namespace
}  // namespace spqr
