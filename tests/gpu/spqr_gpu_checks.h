// Checks shared by the GPU SpQR layout/kernel tests (tests/cuda_emu/spqr_gpu_test.cc on the CPU
// harness in two thread orders, tests/gpu/spqr_gpu_linear_test.cc natively): the permuted
// reference decode, poisoned device buffers, and LaunchSpqrGpuLinear against the format's CPU
// product (SpqrMatmul) with the bounds documented in engine/backend/cuda/spqr_gpu_linear.cuh.
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "engine/backend/cuda/cublas_gemm.h"
#include "engine/backend/cuda/device_buffer.h"
#include "engine/backend/cuda/spqr_gpu_layout.h"
#include "engine/backend/cuda/spqr_gpu_linear.cuh"
#include "engine/format/spqr_layer.h"
#include "engine/format/spqr_matmul.h"
#include "engine/util/half.h"
#include "gtest/gtest.h"

namespace spqr::testing {

inline constexpr uint8_t kPoison = 0xff;  // NaN as fp32

template <typename T>
inline DeviceBuffer Upload(const std::vector<T>& host) {
  absl::StatusOr<DeviceBuffer> b = DeviceBuffer::FromVector(host);
  EXPECT_TRUE(b.ok()) << b.status();
  return b.ok() ? std::move(*b) : DeviceBuffer();
}

inline DeviceBuffer Poisoned(size_t bytes) {
  absl::StatusOr<DeviceBuffer> b = DeviceBuffer::Allocate(bytes);
  EXPECT_TRUE(b.ok()) << b.status();
  if (!b.ok()) return DeviceBuffer();
  EXPECT_TRUE(b->Fill(kPoison).ok());
  return std::move(*b);
}

template <typename T>
std::vector<T> Download(const DeviceBuffer& b) {
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  absl::StatusOr<std::vector<T>> v = b.ToVector<T>();
  EXPECT_TRUE(v.ok()) << v.status();
  return v.ok() ? *v : std::vector<T>();
}

// The reference in permuted column order: want[r * n + j] = W_hat[r][perm[j]].
inline std::vector<float> PermutedReference(const PackedSpqrLayer& layer) {
  absl::StatusOr<std::vector<float>> dense = DequantizeSpqrLayer(layer);
  EXPECT_TRUE(dense.ok()) << dense.status();
  const int64_t m = layer.out_features, n = layer.in_features;
  std::vector<float> out(static_cast<size_t>(m * n));
  if (!dense.ok()) return out;
  for (int64_t r = 0; r < m; ++r) {
    for (int64_t j = 0; j < n; ++j) out[r * n + j] = (*dense)[r * n + layer.perm[j]];
  }
  return out;
}

// Runs LaunchSpqrGpuLinear (the path its rule picks, or `forced`; the tensor-core path with
// `mma_splits` K splits, 0 = its rule) and checks it against SpqrMatmul with the documented bound.
inline void CheckLinear(const PackedSpqrLayer& layer, const SpqrGpuDeviceLayer& device,
                        const CublasHandle& cublas, int64_t batch, std::mt19937& rng,
                        SpqrGpuPath forced = SpqrGpuPath::kAuto, int mma_splits = 0) {
  SCOPED_TRACE(::testing::Message() << "batch " << batch << " path " << static_cast<int>(forced)
                                    << " splits " << mma_splits);
  const int64_t m = layer.out_features, n = layer.in_features;
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(batch * n));
  for (float& v : x) v = normal(rng);
  std::vector<float> want(static_cast<size_t>(batch * m));
  ASSERT_TRUE(SpqrMatmul(layer, x.data(), batch, want.data()).ok());
  const std::vector<float> w = PermutedReference(layer);

  const SpqrGpuPath chosen = ChooseSpqrGpuPath(device.view(), batch);
  const bool kernels_ok = layer.wbits <= 4 && layer.beta1 % 8 == 0;
  const bool mma_ok = kernels_ok && !layer.fp16_arithmetic();  // no fp16-arithmetic instance
  EXPECT_EQ(chosen, !kernels_ok                              ? SpqrGpuPath::kDequantGemm
                    : batch <= kSpqrGpuDecodeMaxBatch        ? SpqrGpuPath::kDecode
                    : mma_ok && batch <= kSpqrGpuMmaMaxBatch ? SpqrGpuPath::kMma
                                                             : SpqrGpuPath::kDequantGemm);
  const SpqrGpuPath path = forced == SpqrGpuPath::kAuto ? chosen : forced;
  DeviceBuffer d_x = Upload(x);
  DeviceBuffer d_y = Poisoned(batch * m * sizeof(float));
  const int64_t ws_bytes = SpqrGpuLinearWorkspaceBytes(device.view(), batch, path, mma_splits);
  DeviceBuffer ws = Poisoned(static_cast<size_t>(ws_bytes));
  SpqrGpuLinearParams p;
  p.layer = device.view();
  p.x = d_x.as<float>();
  p.y = d_y.as<float>();
  p.batch = batch;
  p.workspace = ws.data();
  p.workspace_bytes = ws_bytes;
  p.cublas = &cublas;
  p.path = path;
  p.mma_splits = mma_splits;
  const absl::Status status = LaunchSpqrGpuLinear(p, nullptr);
  ASSERT_TRUE(status.ok()) << status;
  const std::vector<float> y = Download<float>(d_y);
  ASSERT_EQ(y.size(), want.size());
  const double u24 = std::ldexp(1.0, -24);
  for (int64_t b = 0; b < batch; ++b) {
    std::vector<float> xp(static_cast<size_t>(n));
    for (int64_t j = 0; j < n; ++j) xp[j] = x[b * n + layer.perm[j]];
    for (int64_t r = 0; r < m; ++r) {
      double abs_sum = 0.0, abs_parts = 0.0;
      for (int64_t j = 0; j < n; ++j) abs_sum += std::abs(double{w[r * n + j]} * xp[j]);
      for (uint32_t k = layer.outlier_row_offsets[r]; k < layer.outlier_row_offsets[r + 1]; ++k) {
        abs_parts += std::abs(double{F16ToF32(layer.outlier_values[k])} * xp[layer.outlier_col(k)]);
      }
      // Both products' rounding (the CPU product's bound is the same shape, spqr_matmul.h).
      double tol = 2.0 * 2.0 * (n + 64) * u24 * (abs_sum + 2.0 * abs_parts);
      const double f16 = std::ldexp(1.0, -10) + std::ldexp(1.0, -22);  // fp16 w times fp16 x
      if (path == SpqrGpuPath::kDecode || path == SpqrGpuPath::kMma) {
        double e_sum = 0.0;
        for (int64_t j = 0; j < n; ++j) {  // the one-FMA weight: e_j per weight
          const GroupStats s = DecodeGroupStats(layer, r, j / layer.beta1);
          const double e = 3.0 * u24 * std::abs(s.scale) * ((1 << layer.wbits) + std::abs(s.zero));
          e_sum += e * std::abs(xp[j]);
        }
        // kMma rounds w' = w_dense + O(e_j) to fp16, and |w_dense| <= |w| + |residual|.
        tol += path == SpqrGpuPath::kMma ? (1.0 + f16) * e_sum + f16 * abs_parts : e_sum;
      }
      if (path != SpqrGpuPath::kDecode) {  // fp16 weights and inputs (kMma: of the one-FMA w)
        double abs_wx = 0.0;
        for (int64_t j = 0; j < n; ++j) abs_wx += std::abs(double{w[r * n + j]}) + std::abs(xp[j]);
        tol += f16 * abs_sum + u24 * abs_wx;
      }
      ASSERT_NEAR(y[b * m + r], want[b * m + r], tol + 1e-30) << "b " << b << " r " << r;
    }
  }
}

}  // namespace spqr::testing
