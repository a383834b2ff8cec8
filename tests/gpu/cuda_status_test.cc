// Tests that need no GPU: CUDA/cuBLAS error mapping, the device query's behaviour on this machine
// (with or without a driver), and the launch functions' argument validation, which must reject bad
// calls before touching the device.
#include "engine/backend/cuda/cuda_status.h"

#include <cuda_runtime.h>

#include "engine/backend/cuda/cast_f32.cuh"
#include "engine/backend/cuda/cublas_gemm.h"
#include "engine/backend/cuda/device_query.h"
#include "engine/backend/cuda/rms_norm.cuh"
#include "engine/backend/cuda/rope.cuh"
#include "engine/backend/cuda/silu_mul.cuh"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace spqr {
namespace {

using ::testing::HasSubstr;

absl::Status FailsWith(cudaError_t error) {
  CUDA_RETURN_IF_ERROR(error);
  return absl::OkStatus();
}

absl::Status CublasFailsWith(cublasStatus_t status) {
  CUBLAS_RETURN_IF_ERROR(status);
  return absl::OkStatus();
}

TEST(CudaStatusTest, SuccessIsOk) {
  EXPECT_TRUE(FailsWith(cudaSuccess).ok());
  EXPECT_TRUE(CublasFailsWith(CUBLAS_STATUS_SUCCESS).ok());
}

TEST(CudaStatusTest, MessageNamesExpressionFileLineAndError) {
  const absl::Status status = FailsWith(cudaErrorIllegalAddress);
  EXPECT_EQ(status.code(), absl::StatusCode::kInternal);
  EXPECT_THAT(status.message(), HasSubstr("cuda_status_test.cc:"));
  EXPECT_THAT(status.message(), HasSubstr("error failed"));  // the expression's text
  EXPECT_THAT(status.message(), HasSubstr("cudaErrorIllegalAddress"));
}

TEST(CudaStatusTest, CodesMapToStatusCodes) {
  EXPECT_EQ(FailsWith(cudaErrorNoDevice).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(FailsWith(cudaErrorInsufficientDriver).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(FailsWith(cudaErrorMemoryAllocation).code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(FailsWith(cudaErrorInvalidValue).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CublasFailsWith(CUBLAS_STATUS_ALLOC_FAILED).code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(CublasFailsWith(CUBLAS_STATUS_NOT_INITIALIZED).code(),
            absl::StatusCode::kFailedPrecondition);
  const absl::Status exec = CublasFailsWith(CUBLAS_STATUS_EXECUTION_FAILED);
  EXPECT_EQ(exec.code(), absl::StatusCode::kInternal);
  EXPECT_THAT(exec.message(), HasSubstr("CUBLAS_STATUS_EXECUTION_FAILED"));
}

// On a machine without the driver (CI, the development machine) the query must fail cleanly with
// FAILED_PRECONDITION; with a driver it must describe each device sensibly.
TEST(DeviceQueryTest, ReportsDevicesOrWhyNot) {
  const absl::StatusOr<std::vector<CudaDeviceInfo>> devices = QueryCudaDevices();
  if (!devices.ok()) {
    EXPECT_EQ(devices.status().code(), absl::StatusCode::kFailedPrecondition) << devices.status();
    EXPECT_FALSE(devices.status().message().empty());
    std::cout << "no device: " << devices.status() << "\n";
    return;
  }
  std::cout << DescribeCudaDevices(*devices) << "\n";
  for (const CudaDeviceInfo& d : *devices) {
    EXPECT_FALSE(d.name.empty());
    EXPECT_GE(d.compute_capability_major, 3);
    EXPECT_GT(d.total_memory_bytes, 0);
    EXPECT_GT(d.free_memory_bytes, 0);
    EXPECT_LE(d.free_memory_bytes, d.total_memory_bytes);
    EXPECT_GT(d.multiprocessor_count, 0);
    EXPECT_GT(d.driver_version, 0);
    EXPECT_EQ(d.can_run_kernels, d.unsupported_reason.empty());
  }
}

TEST(DeviceQueryTest, KnowsItsCompiledArchitectures) {
#if defined(SPQR_CUDA_EMU)
  GTEST_SKIP() << "built for the CPU harness: there is no device code (docs/cuda-harness.md)";
#endif
  const std::vector<int> archs = CompiledCudaArchitectures();
  ASSERT_FALSE(archs.empty());
  for (int arch : archs) EXPECT_GE(arch, 500);
}

TEST(LaunchValidationTest, RmsNormRejectsBadArguments) {
  float dummy = 0.0f;
  RmsNormParams p;
  p.input = &dummy;
  p.weight = &dummy;
  p.output = &dummy;
  p.rows = 2;
  p.dim = 8;
  p.input_row_stride = 8;
  p.output_row_stride = 4;  // < dim
  absl::Status status = LaunchRmsNorm(p, nullptr);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("output_row_stride"));
  p.output_row_stride = 8;
  p.weight = nullptr;
  EXPECT_THAT(LaunchRmsNorm(p, nullptr).message(), HasSubstr("weight is null"));
  p.weight = &dummy;
  p.weight_dtype = DType::kI32;
  EXPECT_THAT(LaunchRmsNorm(p, nullptr).message(), HasSubstr("weight_dtype"));
  p.dim = 0;
  EXPECT_THAT(LaunchRmsNorm(p, nullptr).message(), HasSubstr("dim = 0"));
  RmsNormParams empty;  // rows == 0 with everything else unset: nothing to do
  empty.dim = 8;
  EXPECT_TRUE(LaunchRmsNorm(empty, nullptr).ok());
}

TEST(LaunchValidationTest, RopeRejectsBadArguments) {
  float dummy = 0.0f;
  int32_t position = 0;
  RopeParams p;
  p.q = &dummy;
  p.positions = &position;
  p.inv_freq = &dummy;
  p.num_tokens = 1;
  p.num_q_heads = 2;
  p.num_kv_heads = 1;
  p.head_dim = 7;
  p.q_token_stride = 14;
  EXPECT_THAT(LaunchRope(p, nullptr).message(), HasSubstr("even"));
  p.head_dim = 8;
  p.q_token_stride = 8;  // < 2 heads * 8
  EXPECT_THAT(LaunchRope(p, nullptr).message(), HasSubstr("q_token_stride"));
  p.q_token_stride = 16;
  EXPECT_THAT(LaunchRope(p, nullptr).message(), HasSubstr("k is null"));
}

TEST(LaunchValidationTest, SiluMulAndCastRejectBadArguments) {
  float dummy = 0.0f;
  SiluMulParams s;
  s.gate = &dummy;
  s.up = nullptr;
  s.output = &dummy;
  s.rows = 1;
  s.cols = 4;
  s.gate_row_stride = s.up_row_stride = s.output_row_stride = 4;
  EXPECT_THAT(LaunchSiluMul(s, nullptr).message(), HasSubstr("up is null"));
  CastF32Params c;
  c.input = &dummy;
  c.output = &dummy;
  c.count = 1;
  c.output_dtype = DType::kF32;
  EXPECT_THAT(LaunchCastF32(c, nullptr).message(), HasSubstr("output_dtype"));
}

TEST(LaunchValidationTest, DenseGemmRejectsBadArguments) {
  CublasHandle no_handle;  // never created: validation must not reach cuBLAS
  uint16_t dummy = 0;
  float y = 0.0f;
  DenseGemmParams p;
  p.x = &dummy;
  p.w = &dummy;
  p.y = &y;
  p.m = 1;
  p.n = 1;
  p.k = int64_t{1} << 33;  // does not fit cuBLAS's int
  EXPECT_THAT(DenseGemm(no_handle, p).message(), HasSubstr("k = 8589934592"));
  p.k = 1;
  EXPECT_THAT(DenseGemm(no_handle, p).message(), HasSubstr("handle is null"));
}

}  // namespace
}  // namespace spqr
