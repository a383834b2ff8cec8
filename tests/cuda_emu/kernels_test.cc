// Parity of the CUDA backend's kernels, run on the CPU harness (docs/cuda-harness.md), with the
// CPU backend's ops: every launch function on random, odd shapes (not multiples of 16/32/128, row
// strides with padding), in two thread orders (forward and reverse), outputs poisoned beforehand
// so that an unwritten element cannot pass. Tolerances, and why:
//   RMSNorm   1e-6 abs + 4e-6 rel: fp32 sums of squares in a different order (tree vs. SIMD),
//             1/sqrt vs rsqrtf (2 ulp on a GPU; the harness uses 1/sqrt).
//   RoPE      2e-6 abs + 2e-6 rel: both rotate in fp32 from the same fp32 angle; only sincosf's
//             last bits may differ.
//   SwiGLU    2e-6 rel: one expf and a division per element.
//   cast, SpQR dequantize: bit-exact (the same rounding of the same values).
//   SpQR GEMV: 4 n 2^-24 sum_j |w_j x_j| (+1e-30): fp32 sums of the same products in another
//             order (the format module's bound, engine/format/spqr_matmul.h); with one-hot inputs
//             ("fp16 arithmetic" layers, whose weights that bound cannot tell from the fp32
//             decode) bit-exact: each output is then one decoded weight.
//   Dense GEMM (cuBLAS' reference): 4 k 2^-24 sum |x w| against a double product.
//   KV store: bit-exact (a copy). Paged attention: (2e-5 abs + 2e-5 rel) max(1, query scale)
//             (why: tests/gpu/paged_attention_parity.h, shared with the GPU suite).
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/backend/cpu/rms_norm.h"
#include "engine/backend/cpu/rope.h"
#include "engine/backend/cpu/swiglu.h"
#include "engine/backend/cuda/cast_f32.cuh"
#include "engine/backend/cuda/cublas_gemm.h"
#include "engine/backend/cuda/device_buffer.h"
#include "engine/backend/cuda/emu/harness.h"
#include "engine/backend/cuda/rms_norm.cuh"
#include "engine/backend/cuda/rope.cuh"
#include "engine/backend/cuda/silu_mul.cuh"
#include "engine/backend/cuda/spqr_dequantize.cuh"
#include "engine/backend/cuda/spqr_device_layer.h"
#include "engine/backend/cuda/spqr_gemv.cuh"
#include "engine/format/spqr_layer.h"
#include "engine/format/spqr_matmul.h"
#include "engine/model/tensor.h"
#include "engine/util/half.h"
#include "gtest/gtest.h"
#include "tests/cuda_emu/emu_test_buffers.h"
#include "tests/gpu/paged_attention_parity.h"
#include "tests/gpu/spqr_random_layer.h"

namespace spqr {
namespace {

using emu_test::kPoison;
using emu_test::Poisoned;
using emu_test::RandomNormal;
using emu_test::Upload;

template <typename T>
std::vector<T> Download(const DeviceBuffer& b) {
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  absl::StatusOr<std::vector<T>> v = b.ToVector<T>();
  EXPECT_TRUE(v.ok()) << v.status();
  return v.ok() ? *v : std::vector<T>();
}

// |got - want| <= atol + rtol |want| elementwise, both finite.
::testing::AssertionResult Close(const std::vector<float>& got, const std::vector<float>& want,
                                 double atol, double rtol) {
  if (got.size() != want.size()) return ::testing::AssertionFailure() << "size mismatch";
  int bad = 0;
  std::string first;
  for (size_t i = 0; i < got.size(); ++i) {
    const double err = std::abs(double{got[i]} - want[i]);
    if (!(std::isfinite(got[i]) && err <= atol + rtol * std::abs(want[i]))) {
      if (bad++ < 5) {
        first += "\n  [" + std::to_string(i) + "] got " + std::to_string(got[i]) + " want " +
                 std::to_string(want[i]);
      }
    }
  }
  if (bad > 0) return ::testing::AssertionFailure() << bad << " elements differ" << first;
  return ::testing::AssertionSuccess();
}

// Each test runs once per thread order.
class KernelParityTest : public ::testing::TestWithParam<emu::ThreadOrder> {
 protected:
  void SetUp() override { scoped_.emplace(emu::Schedule{GetParam(), 0}); }
  std::optional<emu::ScopedSchedule> scoped_;
};

TEST_P(KernelParityTest, RmsNormMatchesCpuBackend) {
  std::mt19937 rng(11);
  struct Case {
    int64_t rows, dim, pad;
    DType dtype;
    bool in_place;
  };
  for (const Case& c : {Case{3, 1000, 5, DType::kF16, false}, Case{2, 33, 0, DType::kBF16, true},
                        Case{1, 4099, 1, DType::kF32, false}}) {
    SCOPED_TRACE(::testing::Message() << "rows " << c.rows << " dim " << c.dim);
    const int64_t stride = c.dim + c.pad;
    std::vector<float> x = RandomNormal(c.rows * stride, 3.0f, rng);
    const std::vector<float> w_values = RandomNormal(c.dim, 1.0f, rng);
    std::vector<uint8_t> w_bytes(c.dim * DTypeSize(c.dtype));
    for (int64_t i = 0; i < c.dim; ++i) {
      if (c.dtype == DType::kF32) {
        std::memcpy(&w_bytes[4 * i], &w_values[i], 4);
      } else {
        const uint16_t h = c.dtype == DType::kF16 ? F32ToF16(w_values[i]) : F32ToBf16(w_values[i]);
        std::memcpy(&w_bytes[2 * i], &h, 2);
      }
    }
    TensorView weight;
    weight.dtype = c.dtype;
    weight.shape = {c.dim};
    weight.data = w_bytes.data();
    weight.nbytes = w_bytes.size();
    const float eps = 1e-5f;
    std::vector<float> want(c.rows * c.dim);
    for (int64_t r = 0; r < c.rows; ++r) {  // the CPU op takes dense rows
      cpu::RmsNorm(x.data() + r * stride, 1, c.dim, weight, eps, want.data() + r * c.dim, 1);
    }

    DeviceBuffer d_x = Upload(x);
    DeviceBuffer d_w = Upload(w_bytes);
    DeviceBuffer d_out = Poisoned(x.size() * sizeof(float));
    RmsNormParams p;
    p.input = d_x.as<float>();
    p.weight = d_w.data();
    p.weight_dtype = c.dtype;
    p.output = c.in_place ? d_x.as<float>() : d_out.as<float>();
    p.rows = c.rows;
    p.dim = c.dim;
    p.input_row_stride = stride;
    p.output_row_stride = stride;
    p.eps = eps;
    ASSERT_TRUE(LaunchRmsNorm(p, nullptr).ok());
    const std::vector<float> out = Download<float>(c.in_place ? d_x : d_out);
    std::vector<float> got;
    for (int64_t r = 0; r < c.rows; ++r) {
      got.insert(got.end(), out.begin() + r * stride, out.begin() + r * stride + c.dim);
      for (int64_t i = c.dim; i < stride; ++i) {  // padding is not the kernel's to write
        if (c.in_place) {
          EXPECT_EQ(out[r * stride + i], x[r * stride + i]);
        } else {
          EXPECT_TRUE(std::isnan(out[r * stride + i]));
        }
      }
    }
    EXPECT_TRUE(Close(got, want, 1e-6, 4e-6));
  }
}

TEST_P(KernelParityTest, RopeMatchesCpuBackend) {
  std::mt19937 rng(12);
  struct Case {
    int64_t tokens;
    int32_t q_heads, kv_heads, head_dim;
    int64_t pad;
    RopeScaling::Type scaling;
  };
  for (const Case& c : {Case{5, 4, 1, 64, 3, RopeScaling::Type::kNone},
                        Case{3, 8, 1, 128, 0, RopeScaling::Type::kLlama3},
                        Case{2, 3, 3, 64, 1, RopeScaling::Type::kLinear},
                        Case{2, 5, 0, 64, 0, RopeScaling::Type::kNone}}) {
    SCOPED_TRACE(::testing::Message()
                 << "q " << c.q_heads << " kv " << c.kv_heads << " d " << c.head_dim);
    RopeScaling scaling;
    scaling.type = c.scaling;
    scaling.factor = c.scaling == RopeScaling::Type::kNone ? 1.0 : 8.0;
    const std::vector<float> inv_freq = cpu::ComputeRopeInvFreq(c.head_dim, 500000.0, scaling);
    const int64_t q_stride = int64_t{c.q_heads} * c.head_dim + c.pad;
    const int64_t k_stride = int64_t{c.kv_heads} * c.head_dim + c.pad;
    const std::vector<float> q = RandomNormal(c.tokens * q_stride, 1.0f, rng);
    const std::vector<float> k = RandomNormal(std::max<int64_t>(1, c.tokens * k_stride), 1.0f, rng);
    std::vector<int32_t> positions(c.tokens);
    for (int32_t& pos : positions) pos = std::uniform_int_distribution<int32_t>(0, 131071)(rng);
    positions[0] = 0;

    std::vector<float> want_q = q;
    std::vector<float> want_k = k;
    for (int64_t t = 0; t < c.tokens; ++t) {
      cpu::ApplyRope(want_q.data() + t * q_stride, c.q_heads,
                     c.kv_heads > 0 ? want_k.data() + t * k_stride : nullptr, c.kv_heads,
                     c.head_dim, positions[t], inv_freq.data());
    }

    DeviceBuffer d_q = Upload(q);
    DeviceBuffer d_k = Upload(k);
    DeviceBuffer d_pos = Upload(positions);
    DeviceBuffer d_freq = Upload(inv_freq);
    RopeParams p;
    p.q = d_q.as<float>();
    p.k = c.kv_heads > 0 ? d_k.as<float>() : nullptr;
    p.positions = d_pos.as<int32_t>();
    p.inv_freq = d_freq.as<float>();
    p.num_tokens = c.tokens;
    p.num_q_heads = c.q_heads;
    p.num_kv_heads = c.kv_heads;
    p.head_dim = c.head_dim;
    p.q_token_stride = q_stride;
    p.k_token_stride = k_stride;
    ASSERT_TRUE(LaunchRope(p, nullptr).ok());
    EXPECT_TRUE(Close(Download<float>(d_q), want_q, 2e-6, 2e-6));  // padding included: untouched
    EXPECT_TRUE(Close(Download<float>(d_k), want_k, 2e-6, 2e-6));
  }
}

TEST_P(KernelParityTest, SiluMulMatchesCpuBackend) {
  std::mt19937 rng(13);
  // A fused [rows, 2 * cols] gate|up projection, written to a padded output; cols = 1000 spans
  // four column blocks, the last one partial.
  const int64_t rows = 3, cols = 1000, out_stride = cols + 7;
  const std::vector<float> fused = RandomNormal(rows * 2 * cols, 4.0f, rng);
  std::vector<float> want(rows * cols);
  for (int64_t r = 0; r < rows; ++r) {
    cpu::SwiGlu(fused.data() + r * 2 * cols, fused.data() + r * 2 * cols + cols, cols,
                want.data() + r * cols, 1);
  }
  DeviceBuffer d_fused = Upload(fused);
  DeviceBuffer d_out = Poisoned(rows * out_stride * sizeof(float));
  SiluMulParams p;
  p.gate = d_fused.as<float>();
  p.up = d_fused.as<float>() + cols;
  p.output = d_out.as<float>();
  p.rows = rows;
  p.cols = cols;
  p.gate_row_stride = 2 * cols;
  p.up_row_stride = 2 * cols;
  p.output_row_stride = out_stride;
  ASSERT_TRUE(LaunchSiluMul(p, nullptr).ok());
  const std::vector<float> out = Download<float>(d_out);
  std::vector<float> got;
  for (int64_t r = 0; r < rows; ++r) {
    got.insert(got.end(), out.begin() + r * out_stride, out.begin() + r * out_stride + cols);
    for (int64_t i = cols; i < out_stride; ++i) EXPECT_TRUE(std::isnan(out[r * out_stride + i]));
  }
  EXPECT_TRUE(Close(got, want, 0.0, 2e-6));
}

TEST_P(KernelParityTest, CastF32IsBitExactWithHostConversion) {
  std::mt19937 rng(14);
  std::vector<float> x = RandomNormal(1234, 100.0f, rng);
  x[0] = 65520.0f;  // rounds to fp16 infinity
  x[1] = 1e-8f;     // fp16 subnormal range
  x[2] = -0.0f;
  DeviceBuffer d_x = Upload(x);
  for (DType dtype : {DType::kF16, DType::kBF16}) {
    SCOPED_TRACE(std::string(DTypeName(dtype)));
    DeviceBuffer d_out = Poisoned(x.size() * 2);
    CastF32Params p;
    p.input = d_x.as<float>();
    p.output = d_out.data();
    p.output_dtype = dtype;
    p.count = static_cast<int64_t>(x.size());
    ASSERT_TRUE(LaunchCastF32(p, nullptr).ok());
    const std::vector<uint16_t> got = Download<uint16_t>(d_out);
    for (size_t i = 0; i < x.size(); ++i) {
      ASSERT_EQ(got[i], dtype == DType::kF16 ? F32ToF16(x[i]) : F32ToBf16(x[i])) << i;
    }
  }
}

// Layer shapes that are not multiples of the kernels' tiles: 37 rows (4 warps per block: the
// last block partial), 3-bit codes straddling words, per-row and 16-wide groups, fp16 and bilevel
// statistics, outliers.
const testing::RandomLayerSpec kLayers[] = {
    {37, 160, 3, 16, 16, 3, 0.01},       {9, 96, 4, 96, 3, 16, 0.02}, {5, 264, 2, 8, 5, 3, 0.0},
    {21, 160, 3, 16, 16, 3, 0.05, true},  // the "fp16 arithmetic" variant (spqr-convert's imports)
    {9, 96, 4, 32, 3, 16, 0.05, true},
};

TEST_P(KernelParityTest, SpqrDequantizeIsBitExactWithFormatDecoder) {
  std::mt19937 rng(15);
  for (const testing::RandomLayerSpec& spec : kLayers) {
    SCOPED_TRACE(::testing::PrintToString(spec));
    const PackedSpqrLayer layer = testing::RandomSpqrLayer(spec, rng);
    absl::StatusOr<std::vector<float>> want = DequantizeSpqrLayer(layer);
    ASSERT_TRUE(want.ok()) << want.status();
    absl::StatusOr<SpqrDeviceLayer> device = SpqrDeviceLayer::Upload(layer, "random");
    ASSERT_TRUE(device.ok()) << device.status();
    for (DType dtype : {DType::kF32, DType::kF16}) {
      DeviceBuffer out = Poisoned(want->size() * DTypeSize(dtype));
      SpqrDequantizeParams p;
      p.layer = device->view();
      p.output = out.data();
      p.output_dtype = dtype;
      ASSERT_TRUE(LaunchSpqrDequantize(p, nullptr).ok());
      if (dtype == DType::kF32) {
        const std::vector<float> got = Download<float>(out);
        ASSERT_EQ(got.size(), want->size());
        EXPECT_EQ(std::memcmp(got.data(), want->data(), got.size() * 4), 0);
      } else {
        const std::vector<uint16_t> got = Download<uint16_t>(out);
        for (size_t i = 0; i < got.size(); ++i) ASSERT_EQ(got[i], F32ToF16((*want)[i])) << i;
      }
    }
  }
}

// Runs the GEMV of `device` on x ([batch][n] floats) into a NaN-poisoned [batch][y_stride] output
// (x_perm poisoned too) and returns that output.
absl::StatusOr<std::vector<float>> RunSpqrGemv(const SpqrDeviceLayer& device,
                                               const std::vector<float>& x, int64_t n,
                                               int64_t batch, int64_t y_stride) {
  DeviceBuffer d_x = Upload(x);
  DeviceBuffer d_x_perm = Poisoned(batch * n * sizeof(float));
  DeviceBuffer d_y = Poisoned(batch * y_stride * sizeof(float));
  SpqrGemvParams p;
  p.layer = device.view();
  p.x = d_x.as<float>();
  p.x_perm = d_x_perm.as<float>();
  p.y = d_y.as<float>();
  p.batch = batch;
  p.y_stride = y_stride;
  const absl::Status st = LaunchSpqrGemv(p, nullptr);
  if (!st.ok()) return st;
  return Download<float>(d_y);
}

TEST_P(KernelParityTest, SpqrGemvMatchesFormatProduct) {
  std::mt19937 rng(16);
  for (const testing::RandomLayerSpec& spec : kLayers) {
    SCOPED_TRACE(::testing::PrintToString(spec));
    const PackedSpqrLayer layer = testing::RandomSpqrLayer(spec, rng);
    absl::StatusOr<std::vector<float>> dense = DequantizeSpqrLayer(layer);
    ASSERT_TRUE(dense.ok());
    absl::StatusOr<SpqrDeviceLayer> device = SpqrDeviceLayer::Upload(layer, "random");
    ASSERT_TRUE(device.ok()) << device.status();
    const int64_t m = spec.m, n = spec.n;
    for (int64_t batch : {1, 3, 9}) {  // 9: a full pass of 8 and a pass of 1
      SCOPED_TRACE(::testing::Message() << "batch " << batch);
      const std::vector<float> x = RandomNormal(batch * n, 1.0f, rng);
      std::vector<float> want(batch * m);
      ASSERT_TRUE(SpqrMatmul(layer, x.data(), batch, want.data()).ok());
      const int64_t y_stride = m + 2;
      absl::StatusOr<std::vector<float>> run = RunSpqrGemv(*device, x, n, batch, y_stride);
      ASSERT_TRUE(run.ok()) << run.status();
      const std::vector<float>& y = *run;
      for (int64_t b = 0; b < batch; ++b) {
        for (int64_t r = 0; r < m; ++r) {
          double abs_sum = 0.0;
          for (int64_t j = 0; j < n; ++j) abs_sum += std::abs((*dense)[r * n + j] * x[b * n + j]);
          const double tol = 4.0 * n * std::ldexp(1.0, -24) * abs_sum + 1e-30;
          ASSERT_NEAR(y[b * y_stride + r], want[b * m + r], tol) << "b " << b << " r " << r;
        }
        for (int64_t r = m; r < y_stride; ++r) EXPECT_TRUE(std::isnan(y[b * y_stride + r]));
      }
    }
  }
}

// One-hot inputs: y[b][r] = W_hat[r][c_b] exactly (one nonzero product per row; for an outlier
// of an "fp16 arithmetic" layer w + (h(w + v) - w) = h(w + v)), so the GEMV must reproduce the
// decoded weights bit for bit, variant included. Columns with outliers first.
TEST_P(KernelParityTest, SpqrGemvOneHotInputsGiveTheDecodedWeights) {
  std::mt19937 rng(18);
  for (const testing::RandomLayerSpec& spec : kLayers) {
    if (!spec.fp16_arithmetic) continue;
    SCOPED_TRACE(::testing::PrintToString(spec));
    const PackedSpqrLayer layer = testing::RandomSpqrLayer(spec, rng);
    absl::StatusOr<std::vector<float>> dense = DequantizeSpqrLayer(layer);
    ASSERT_TRUE(dense.ok());
    absl::StatusOr<SpqrDeviceLayer> device = SpqrDeviceLayer::Upload(layer, "random");
    ASSERT_TRUE(device.ok()) << device.status();
    const int64_t m = spec.m, n = spec.n, batch = 8;
    ASSERT_GE(layer.num_outliers(), batch);
    std::vector<float> x(static_cast<size_t>(batch * n), 0.0f);
    std::vector<int64_t> cols;
    for (int64_t b = 0; b < batch; ++b) {
      // Original column of the b-th outlier (spread over the CSR array).
      const int64_t k = b * (layer.num_outliers() / batch);
      cols.push_back(layer.perm[layer.outlier_col(k)]);
      x[b * n + cols.back()] = 1.0f;
    }
    absl::StatusOr<std::vector<float>> run = RunSpqrGemv(*device, x, n, batch, /*y_stride=*/m);
    ASSERT_TRUE(run.ok()) << run.status();
    const std::vector<float>& y = *run;
    for (int64_t b = 0; b < batch; ++b) {
      for (int64_t r = 0; r < m; ++r) {
        const float want = (*dense)[r * n + cols[b]];
        // == on values: a sum of signed zeros may end in either zero, any other value must match.
        ASSERT_EQ(y[b * m + r], want) << "b " << b << " r " << r;
      }
    }
  }
}

// cuBLAS under the harness is a reference GEMM with cuBLAS' math; DenseGemm's layout mapping
// (row-major through column-major cuBLAS) is what this checks.
TEST_P(KernelParityTest, DenseGemmMatchesDoubleProduct) {
  std::mt19937 rng(17);
  const int64_t m = 3, n = 37, k = 70;
  const std::vector<float> xv = RandomNormal(m * k, 1.0f, rng);
  const std::vector<float> wv = RandomNormal(n * k, 0.1f, rng);
  for (DType dtype : {DType::kF16, DType::kBF16}) {
    SCOPED_TRACE(std::string(DTypeName(dtype)));
    auto encode = [dtype](const std::vector<float>& v, std::vector<float>* decoded) {
      std::vector<uint16_t> bits(v.size());
      decoded->resize(v.size());
      for (size_t i = 0; i < v.size(); ++i) {
        bits[i] = dtype == DType::kF16 ? F32ToF16(v[i]) : F32ToBf16(v[i]);
        (*decoded)[i] = dtype == DType::kF16 ? F16ToF32(bits[i]) : Bf16ToF32(bits[i]);
      }
      return bits;
    };
    std::vector<float> x, w;
    DeviceBuffer d_x = Upload(encode(xv, &x));
    DeviceBuffer d_w = Upload(encode(wv, &w));
    DeviceBuffer d_y = Poisoned(m * n * sizeof(float));
    absl::StatusOr<CublasHandle> handle = CublasHandle::Create(nullptr);
    ASSERT_TRUE(handle.ok()) << handle.status();
    DenseGemmParams p;
    p.x = d_x.data();
    p.w = d_w.data();
    p.y = d_y.as<float>();
    p.dtype = dtype;
    p.m = m;
    p.n = n;
    p.k = k;
    ASSERT_TRUE(DenseGemm(*handle, p).ok());
    const std::vector<float> y = Download<float>(d_y);
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t j = 0; j < n; ++j) {
        double acc = 0.0, abs_acc = 0.0;
        for (int64_t t = 0; t < k; ++t) {
          acc += double{x[i * k + t]} * w[j * k + t];
          abs_acc += std::abs(double{x[i * k + t]} * w[j * k + t]);
        }
        EXPECT_NEAR(y[i * n + j], acc, 4.0 * k * std::ldexp(1.0, -24) * abs_acc);
      }
    }
  }
}

TEST_P(KernelParityTest, PagedAttentionAndStoreKvMatchCpuBackend) {
  std::mt19937 rng(18);
  for (const testing::AttentionCase& c : testing::PagedAttentionCases()) {
    SCOPED_TRACE(::testing::PrintToString(c));
    testing::CheckPagedAttentionParity(c, rng);
  }
}

TEST_P(KernelParityTest, KernelsRanOnTheHarness) {
  const emu::Stats before = emu::GetStats();
  std::vector<float> x(64, 1.0f);
  DeviceBuffer d_x = Upload(x);
  DeviceBuffer d_out = Poisoned(64 * 2);
  CastF32Params p;
  p.input = d_x.as<float>();
  p.output = d_out.data();
  p.count = 64;
  ASSERT_TRUE(LaunchCastF32(p, nullptr).ok());
  EXPECT_EQ(emu::GetStats().launches, before.launches + 1);
  EXPECT_EQ(emu::GetStats().threads, before.threads + 256);  // one block of 256
}

INSTANTIATE_TEST_SUITE_P(Orders, KernelParityTest,
                         ::testing::Values(emu::ThreadOrder::kForward, emu::ThreadOrder::kReverse),
                         [](const ::testing::TestParamInfo<emu::ThreadOrder>& info) {
                           return info.param == emu::ThreadOrder::kForward ? "forward" : "reverse";
                         });

}  // namespace
}  // namespace spqr
