// GPU parity test of the cuBLAS dense GEMM (fp16 and bf16 operands, fp32 accumulation and output)
// against a double-precision reference on odd shapes, including the batch-1 GEMV. Skipped with the
// reason when no usable CUDA device is present.
#include "engine/backend/cuda/cublas_gemm.h"

#include <cuda_runtime.h>

#include <cmath>

#include "engine/backend/cuda/cast_f32.cuh"
#include "engine/backend/cuda/cublas_api.h"
#include "engine/backend/cuda/device_buffer.h"
#include "engine/util/half.h"
#include "gtest/gtest.h"
#include "tests/gpu/cuda_op_refs.h"
#include "tests/gpu/cuda_test_support.h"

namespace spqr {
namespace {

struct GemmCase {
  int64_t m, n, k;
  DType dtype;
};

// Rounds values to `dtype` and returns the 16-bit codes; `values` becomes what the codes decode to.
std::vector<uint16_t> RoundTo16Bit(std::vector<float>* values, DType dtype) {
  std::vector<uint16_t> codes(values->size());
  for (size_t i = 0; i < values->size(); ++i) {
    codes[i] = dtype == DType::kF16 ? F32ToF16((*values)[i]) : F32ToBf16((*values)[i]);
    (*values)[i] = dtype == DType::kF16 ? F16ToF32(codes[i]) : Bf16ToF32(codes[i]);
  }
  return codes;
}

// Names the case in test listings (gtest would otherwise dump the struct's bytes, padding
// included).
void PrintTo(const GemmCase& c, std::ostream* os) {
  *os << "m" << c.m << "_n" << c.n << "_k" << c.k << "_" << DTypeName(c.dtype);
}

class DenseGemmParityTest : public ::testing::TestWithParam<GemmCase> {};

// Needs no device: cuBLAS is dlopened (cublas_api.h), so this checks that the toolkit's library
// is found the way the server finds it and has every entry point the backend calls.
TEST(CublasApiTest, LoadsEveryEntryPoint) {
  const absl::StatusOr<const CublasApi*> api = LoadCublasApi();
  ASSERT_TRUE(api.ok()) << api.status();
  EXPECT_NE((*api)->create, nullptr);
  EXPECT_NE((*api)->destroy, nullptr);
  EXPECT_NE((*api)->set_stream, nullptr);
  EXPECT_NE((*api)->gemm_ex, nullptr);
  // The same table every time (loaded once per process).
  EXPECT_EQ(*LoadCublasApi(), *api);
}

TEST_P(DenseGemmParityTest, MatchesReference) {
  SPQR_SKIP_WITHOUT_CUDA_DEVICE();
  const GemmCase c = GetParam();
  const uint32_t seed = testing::FreshSeed();
  SCOPED_TRACE(::testing::Message()
               << "seed " << seed << " m=" << c.m << " n=" << c.n << " k=" << c.k);
  std::mt19937 rng(seed);
  std::vector<float> x = testing::RandomNormal(c.m * c.k, 1.0f, rng);
  std::vector<float> w = testing::RandomNormal(c.n * c.k, 1.0f / std::sqrt(float(c.k)), rng);
  const std::vector<uint16_t> w_codes = RoundTo16Bit(&w, c.dtype);
  // X goes up as fp32 and through the cast kernel, as the backend will feed it.
  std::vector<float> x_rounded = x;
  RoundTo16Bit(&x_rounded, c.dtype);
  std::vector<double> abs_sums;
  const std::vector<double> want = testing::GemmRef(x_rounded, w, c.m, c.n, c.k, &abs_sums);

  absl::StatusOr<DeviceBuffer> d_x32 = DeviceBuffer::FromVector(x);
  absl::StatusOr<DeviceBuffer> d_x16 = DeviceBuffer::Allocate(x.size() * 2);
  absl::StatusOr<DeviceBuffer> d_w = DeviceBuffer::FromVector(w_codes);
  absl::StatusOr<DeviceBuffer> d_y = DeviceBuffer::Allocate(c.m * c.n * sizeof(float));
  ASSERT_TRUE(d_x32.ok() && d_x16.ok() && d_w.ok() && d_y.ok());
  ASSERT_TRUE(d_y->Fill(0xff).ok());  // NaN: every element must be written
  CastF32Params cast;
  cast.input = d_x32->as<float>();
  cast.output = d_x16->data();
  cast.output_dtype = c.dtype;
  cast.count = c.m * c.k;
  ASSERT_TRUE(LaunchCastF32(cast, nullptr).ok());

  absl::StatusOr<CublasHandle> handle = CublasHandle::Create(nullptr);
  ASSERT_TRUE(handle.ok()) << handle.status();
  DenseGemmParams p;
  p.x = d_x16->data();
  p.w = d_w->data();
  p.y = d_y->as<float>();
  p.dtype = c.dtype;
  p.m = c.m;
  p.n = c.n;
  p.k = c.k;
  const absl::Status status = DenseGemm(*handle, p);
  ASSERT_TRUE(status.ok()) << status;
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  absl::StatusOr<std::vector<float>> got = d_y->ToVector<float>();
  ASSERT_TRUE(got.ok()) << got.status();

  // Products of 16-bit values are exact in fp32; the fp32 sums lose at most ~k * 2^-24 of the sum
  // of magnitudes (in any summation order). Allow 4x that, which still catches any wrong index.
  int failures = 0;
  double err2 = 0.0;
  double ref2 = 0.0;
  for (size_t i = 0; i < want.size(); ++i) {
    const double bound = 4.0 * c.k * std::ldexp(1.0, -24) * abs_sums[i] + 1e-30;
    const double err = std::abs((*got)[i] - want[i]);
    err2 += err * err;
    ref2 += want[i] * want[i];
    if (!(err <= bound) && ++failures <= 5) {
      ADD_FAILURE() << "y[" << i / c.n << "," << i % c.n << "] = " << (*got)[i] << ", want "
                    << want[i] << " (bound " << bound << ")";
    }
  }
  EXPECT_EQ(failures, 0);
  EXPECT_LT(std::sqrt(err2 / ref2), 1e-5);
}

INSTANTIATE_TEST_SUITE_P(Shapes, DenseGemmParityTest,
                         ::testing::Values(GemmCase{1, 1, 1, DType::kF16},
                                           GemmCase{1, 4096 + 16, 4096, DType::kF16},  // GEMV
                                           GemmCase{1, 1029, 11008, DType::kBF16},
                                           GemmCase{3, 1000, 513, DType::kF16},
                                           GemmCase{33, 257, 1029, DType::kBF16},
                                           GemmCase{128, 96, 4096 + 16, DType::kF16}));

}  // namespace
}  // namespace spqr
