// GPU parity tests of the elementwise/row kernels (RMSNorm, RoPE, SiLU*mul, fp32->16-bit cast)
// against their C++ twins in cuda_op_refs.h, on random odd shapes. Skipped with the reason when no
// usable CUDA device is present.
#include <cuda_runtime.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "engine/backend/cuda/cast_f32.cuh"
#include "engine/backend/cuda/device_buffer.h"
#include "engine/backend/cuda/rms_norm.cuh"
#include "engine/backend/cuda/rope.cuh"
#include "engine/backend/cuda/silu_mul.cuh"
#include "engine/util/half.h"
#include "gtest/gtest.h"
#include "tests/gpu/cuda_op_refs.h"
#include "tests/gpu/cuda_test_support.h"

namespace spqr {
namespace {

using testing::AllClose;
using testing::FreshSeed;
using testing::RandomNormal;

constexpr uint8_t kPoison = 0xff;  // all-ones bytes: NaN in fp32, fails any comparison

// Device buffer from a host vector; fails the test on error.
template <typename T>
DeviceBuffer Upload(const std::vector<T>& host) {
  absl::StatusOr<DeviceBuffer> buffer = DeviceBuffer::FromVector(host);
  EXPECT_TRUE(buffer.ok()) << buffer.status();
  return buffer.ok() ? std::move(*buffer) : DeviceBuffer();
}

template <typename T>
std::vector<T> Download(const DeviceBuffer& buffer) {
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  absl::StatusOr<std::vector<T>> host = buffer.ToVector<T>();
  EXPECT_TRUE(host.ok()) << host.status();
  return host.ok() ? *host : std::vector<T>();
}

// Weight bits for `dtype` from float values, and the float values those bits decode to.
std::vector<uint8_t> EncodeWeights(const std::vector<float>& values, DType dtype,
                                   std::vector<float>* decoded) {
  decoded->resize(values.size());
  std::vector<uint8_t> bytes(values.size() * DTypeSize(dtype));
  for (size_t i = 0; i < values.size(); ++i) {
    if (dtype == DType::kF32) {
      std::memcpy(bytes.data() + 4 * i, &values[i], 4);
      (*decoded)[i] = values[i];
      continue;
    }
    const uint16_t h = dtype == DType::kF16 ? F32ToF16(values[i]) : F32ToBf16(values[i]);
    std::memcpy(bytes.data() + 2 * i, &h, 2);
    (*decoded)[i] = dtype == DType::kF16 ? F16ToF32(h) : Bf16ToF32(h);
  }
  return bytes;
}

// Needs no device: the C++ twins themselves must be right, or a GPU session would chase a wrong
// reference. Known values and invariants of each.
TEST(ReferenceTwinsTest, KnownValuesAndInvariants) {
  // RMSNorm with unit weights yields rows of mean square 1 (eps = 0); 3-4 -> 0.6*sqrt2, 0.8*sqrt2.
  const std::vector<double> norm = testing::RmsNormRef({3.0f, 4.0f}, 1, 2, 2, {1.0f, 1.0f}, 0.0);
  EXPECT_NEAR(norm[0], 0.6 * std::sqrt(2.0), 1e-12);
  EXPECT_NEAR(norm[1], 0.8 * std::sqrt(2.0), 1e-12);
  // RoPE: identity at position 0, norm-preserving, and pair 0 rotates by `position` radians.
  const std::vector<float> inv_freq = testing::DefaultInvFreq(4, 10000.0f);
  EXPECT_EQ(inv_freq[0], 1.0f);
  EXPECT_NEAR(inv_freq[1], 0.01f, 1e-9);
  double head[4] = {1.0, 2.0, 3.0, 4.0};
  testing::RopeHeadRef(head, 4, 0, inv_freq);
  EXPECT_DOUBLE_EQ(head[0], 1.0);
  EXPECT_DOUBLE_EQ(head[3], 4.0);
  double rotated[4] = {1.0, 0.0, 0.0, 0.0};
  testing::RopeHeadRef(rotated, 4, 1, inv_freq);  // (x0, x2) = (1, 0) rotated by 1 rad
  EXPECT_NEAR(rotated[0], std::cos(1.0), 1e-12);
  EXPECT_NEAR(rotated[2], std::sin(1.0), 1e-12);
  // SwiGLU: silu(0) = 0, silu(x) -> x for large x, silu(-x) -> 0.
  EXPECT_EQ(testing::SiluMulRef(0.0, 5.0), 0.0);
  EXPECT_NEAR(testing::SiluMulRef(30.0, 2.0), 60.0, 1e-9);
  EXPECT_NEAR(testing::SiluMulRef(-30.0, 2.0), 0.0, 1e-9);
  // GEMM: [1 2; 3 4] x [5 6; 7 8]^T = [17 23; 39 53].
  const std::vector<double> y = testing::GemmRef({1, 2, 3, 4}, {5, 6, 7, 8}, 2, 2, 2);
  EXPECT_EQ(y, (std::vector<double>{17, 23, 39, 53}));
}

struct RmsNormCase {
  int64_t rows, dim, pad;
  DType dtype;
  bool in_place;
};

// Names the case in test listings (gtest would otherwise dump the struct's bytes, padding
// included).
void PrintTo(const RmsNormCase& c, std::ostream* os) {
  *os << "rows" << c.rows << "_dim" << c.dim << "_pad" << c.pad << "_" << DTypeName(c.dtype)
      << (c.in_place ? "_inplace" : "");
}

class RmsNormParityTest : public ::testing::TestWithParam<RmsNormCase> {};

TEST_P(RmsNormParityTest, MatchesReference) {
  SPQR_SKIP_WITHOUT_CUDA_DEVICE();
  const RmsNormCase c = GetParam();
  const uint32_t seed = FreshSeed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937 rng(seed);
  const int64_t stride = c.dim + c.pad;
  std::vector<float> x = RandomNormal(c.rows * stride, 3.0f, rng);
  if (c.rows > 1) {  // a row of large values: the fp32 sum of squares must not overflow
    for (int64_t i = 0; i < c.dim; ++i) x[stride + i] *= 1000.0f;
  }
  std::vector<float> weight_values = RandomNormal(c.dim, 1.0f, rng);
  std::vector<float> weight_decoded;
  const std::vector<uint8_t> weight_bytes = EncodeWeights(weight_values, c.dtype, &weight_decoded);
  const double eps = 1e-5;
  const std::vector<double> want =
      testing::RmsNormRef(x, c.rows, c.dim, stride, weight_decoded, eps);

  DeviceBuffer d_x = Upload(x);
  DeviceBuffer d_w = Upload(weight_bytes);
  absl::StatusOr<DeviceBuffer> d_out = DeviceBuffer::Allocate(c.rows * stride * sizeof(float));
  ASSERT_TRUE(d_out.ok()) << d_out.status();
  ASSERT_TRUE(d_out->Fill(kPoison).ok());
  RmsNormParams p;
  p.input = d_x.as<float>();
  p.weight = d_w.data();
  p.weight_dtype = c.dtype;
  p.output = c.in_place ? d_x.as<float>() : d_out->as<float>();
  p.rows = c.rows;
  p.dim = c.dim;
  p.input_row_stride = stride;
  p.output_row_stride = stride;
  p.eps = static_cast<float>(eps);
  ASSERT_TRUE(LaunchRmsNorm(p, nullptr).ok());
  const std::vector<float> out = Download<float>(c.in_place ? d_x : *d_out);
  std::vector<float> got;
  for (int64_t r = 0; r < c.rows; ++r) {
    got.insert(got.end(), out.begin() + r * stride, out.begin() + r * stride + c.dim);
    // The padding between rows is not ours to write.
    for (int64_t i = c.dim; i < stride; ++i) {
      if (c.in_place) {
        EXPECT_EQ(out[r * stride + i], x[r * stride + i]);
      } else {
        EXPECT_TRUE(std::isnan(out[r * stride + i])) << "padding written at row " << r;
      }
    }
  }
  EXPECT_TRUE(AllClose(got, want, 1e-6, 5e-6));
}

INSTANTIATE_TEST_SUITE_P(Shapes, RmsNormParityTest,
                         ::testing::Values(RmsNormCase{1, 1, 0, DType::kF16, false},
                                           RmsNormCase{3, 7, 5, DType::kBF16, false},
                                           RmsNormCase{5, 4096 + 16, 0, DType::kF16, false},
                                           RmsNormCase{2, 5000, 3, DType::kBF16, true},
                                           RmsNormCase{17, 11008, 0, DType::kF32, false},
                                           RmsNormCase{33, 257, 0, DType::kF16, true}));

struct RopeCase {
  int64_t tokens;
  int32_t q_heads, kv_heads, head_dim;
  int64_t pad;
};

void PrintTo(const RopeCase& c, std::ostream* os) {
  *os << "tokens" << c.tokens << "_q" << c.q_heads << "_kv" << c.kv_heads << "_d" << c.head_dim
      << "_pad" << c.pad;
}

class RopeParityTest : public ::testing::TestWithParam<RopeCase> {};

TEST_P(RopeParityTest, MatchesReference) {
  SPQR_SKIP_WITHOUT_CUDA_DEVICE();
  const RopeCase c = GetParam();
  const uint32_t seed = FreshSeed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937 rng(seed);
  const int64_t q_stride = int64_t{c.q_heads} * c.head_dim + c.pad;
  const int64_t k_stride = int64_t{c.kv_heads} * c.head_dim + c.pad;
  const std::vector<float> q = RandomNormal(c.tokens * q_stride, 1.0f, rng);
  const std::vector<float> k = RandomNormal(std::max<int64_t>(1, c.tokens * k_stride), 1.0f, rng);
  std::vector<int32_t> positions(c.tokens);
  std::uniform_int_distribution<int32_t> pos_dist(0, 131071);
  for (int32_t& pos : positions) pos = pos_dist(rng);
  positions[0] = 0;  // the identity rotation
  if (c.tokens > 1) positions[1] = 131071;
  const std::vector<float> inv_freq = testing::DefaultInvFreq(c.head_dim, 500000.0f);

  // Reference on the whole buffers (padding untouched), in double.
  std::vector<double> want_q(q.begin(), q.end());
  std::vector<double> want_k(k.begin(), k.end());
  for (int64_t t = 0; t < c.tokens; ++t) {
    for (int h = 0; h < c.q_heads; ++h) {
      testing::RopeHeadRef(&want_q[t * q_stride + h * c.head_dim], c.head_dim, positions[t],
                           inv_freq);
    }
    for (int h = 0; h < c.kv_heads; ++h) {
      testing::RopeHeadRef(&want_k[t * k_stride + h * c.head_dim], c.head_dim, positions[t],
                           inv_freq);
    }
  }

  DeviceBuffer d_q = Upload(q);
  DeviceBuffer d_k = Upload(k);
  DeviceBuffer d_pos = Upload(positions);
  DeviceBuffer d_inv = Upload(inv_freq);
  RopeParams p;
  p.q = d_q.as<float>();
  p.k = c.kv_heads > 0 ? d_k.as<float>() : nullptr;
  p.positions = d_pos.as<int32_t>();
  p.inv_freq = d_inv.as<float>();
  p.num_tokens = c.tokens;
  p.num_q_heads = c.q_heads;
  p.num_kv_heads = c.kv_heads;
  p.head_dim = c.head_dim;
  p.q_token_stride = q_stride;
  p.k_token_stride = k_stride;
  ASSERT_TRUE(LaunchRope(p, nullptr).ok());
  // fp32 sincosf of angles up to ~1.3e5 rad: a few ulp of the angle's cosine, times |x| ~ 1.
  EXPECT_TRUE(AllClose(Download<float>(d_q), want_q, 1e-5, 1e-5));
  EXPECT_TRUE(AllClose(Download<float>(d_k), want_k, 1e-5, 1e-5));
}

INSTANTIATE_TEST_SUITE_P(Shapes, RopeParityTest,
                         ::testing::Values(RopeCase{1, 1, 0, 2, 0},      // q only
                                           RopeCase{5, 7, 3, 64, 3},     // GQA, padded rows
                                           RopeCase{33, 32, 8, 128, 0},  // LLaMA-3 8B heads
                                           RopeCase{3, 14, 2, 96, 1}));

TEST(SiluMulParityTest, FusedAndSeparateLayoutsMatchReference) {
  SPQR_SKIP_WITHOUT_CUDA_DEVICE();
  const uint32_t seed = FreshSeed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937 rng(seed);
  for (const auto& [rows, cols] : {std::pair<int64_t, int64_t>{1, 1}, {3, 11008}, {33, 1029}}) {
    SCOPED_TRACE(::testing::Message() << rows << "x" << cols);
    // Fused layout: each row is [gate | up], as one [rows, 2*cols] projection writes it.
    std::vector<float> fused = RandomNormal(rows * 2 * cols, 4.0f, rng);
    fused[0] = -90.0f;  // exp(90) overflows fp32: silu must still give -0, not NaN
    if (cols > 1) fused[1] = 90.0f;
    std::vector<double> want(rows * cols);
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t i = 0; i < cols; ++i) {
        want[r * cols + i] =
            testing::SiluMulRef(fused[r * 2 * cols + i], fused[r * 2 * cols + cols + i]);
      }
    }
    DeviceBuffer d_fused = Upload(fused);
    absl::StatusOr<DeviceBuffer> d_out = DeviceBuffer::Allocate(rows * cols * sizeof(float));
    ASSERT_TRUE(d_out.ok()) << d_out.status();
    ASSERT_TRUE(d_out->Fill(kPoison).ok());
    SiluMulParams p;
    p.gate = d_fused.as<float>();
    p.up = d_fused.as<float>() + cols;
    p.output = d_out->as<float>();
    p.rows = rows;
    p.cols = cols;
    p.gate_row_stride = p.up_row_stride = 2 * cols;
    p.output_row_stride = cols;
    ASSERT_TRUE(LaunchSiluMul(p, nullptr).ok());
    EXPECT_TRUE(AllClose(Download<float>(*d_out), want, 1e-6, 5e-6));

    // Separate gate and up, written in place over gate.
    std::vector<float> gate(rows * cols), up(rows * cols);
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t i = 0; i < cols; ++i) {
        gate[r * cols + i] = fused[r * 2 * cols + i];
        up[r * cols + i] = fused[r * 2 * cols + cols + i];
      }
    }
    DeviceBuffer d_gate = Upload(gate);
    DeviceBuffer d_up = Upload(up);
    p.gate = p.output = d_gate.as<float>();
    p.up = d_up.as<float>();
    p.gate_row_stride = p.up_row_stride = p.output_row_stride = cols;
    ASSERT_TRUE(LaunchSiluMul(p, nullptr).ok());
    EXPECT_TRUE(AllClose(Download<float>(d_gate), want, 1e-6, 5e-6));
  }
}

// The device conversion must give the same bits as engine/util/half.h (round to nearest even),
// including subnormals, overflow to infinity and signed zero; NaN must stay NaN.
TEST(CastF32ParityTest, BitExactWithHostConversion) {
  SPQR_SKIP_WITHOUT_CUDA_DEVICE();
  const uint32_t seed = FreshSeed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937 rng(seed);
  std::vector<float> values = RandomNormal(100003, 100.0f, rng);
  const std::vector<float> specials = {0.0f,
                                       -0.0f,
                                       1e-8f,
                                       -3e-7f,
                                       6.1e-5f,
                                       65504.0f,
                                       65519.0f,
                                       65520.0f,
                                       1e30f,
                                       -1e30f,
                                       1.0f + 1.0f / 2048,
                                       std::numeric_limits<float>::infinity(),
                                       std::numeric_limits<float>::quiet_NaN(),
                                       3.4e38f,
                                       1e-40f};
  std::copy(specials.begin(), specials.end(), values.begin());
  std::uniform_int_distribution<uint32_t> bits(0, 0xffffffffu);
  for (size_t i = specials.size(); i < 1000; ++i) {  // arbitrary bit patterns
    const uint32_t b = bits(rng);
    std::memcpy(&values[i], &b, 4);
  }
  DeviceBuffer d_in = Upload(values);
  for (DType dtype : {DType::kF16, DType::kBF16}) {
    SCOPED_TRACE(std::string(DTypeName(dtype)));
    absl::StatusOr<DeviceBuffer> d_out = DeviceBuffer::Allocate(values.size() * 2);
    ASSERT_TRUE(d_out.ok()) << d_out.status();
    ASSERT_TRUE(d_out->Fill(0xAB).ok());
    CastF32Params p;
    p.input = d_in.as<float>();
    p.output = d_out->data();
    p.output_dtype = dtype;
    p.count = static_cast<int64_t>(values.size());
    ASSERT_TRUE(LaunchCastF32(p, nullptr).ok());
    const std::vector<uint16_t> got = Download<uint16_t>(*d_out);
    int mismatches = 0;
    for (size_t i = 0; i < values.size(); ++i) {
      const uint16_t want = dtype == DType::kF16 ? F32ToF16(values[i]) : F32ToBf16(values[i]);
      const float got_f = dtype == DType::kF16 ? F16ToF32(got[i]) : Bf16ToF32(got[i]);
      const bool ok = std::isnan(values[i]) ? std::isnan(got_f) : got[i] == want;
      if (!ok && ++mismatches <= 5) {
        ADD_FAILURE() << "value " << values[i] << ": got 0x" << std::hex << got[i] << " want 0x"
                      << want;
      }
    }
    EXPECT_EQ(mismatches, 0);
  }
}

}  // namespace
}  // namespace spqr
