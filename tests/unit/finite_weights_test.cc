// Never serve non-finite weights: the load-time NaN/Inf scan (engine/model/finite_check.h) on
// synthetic tensors of every float dtype, and LoadModel refusing hand-damaged copies of the test
// model (dense) and of its SpQR quantization, naming the tensor and the first bad index.
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "engine/model/finite_check.h"
#include "engine/runtime/model.h"
#include "engine/util/half.h"
#include "gtest/gtest.h"
#include "quantizer/model_quantizer.h"
#include "tests/unit/model_damage_util.h"

namespace spqr {
namespace {
namespace fs = std::filesystem;

const float kNaN = std::numeric_limits<float>::quiet_NaN();
const float kInf = std::numeric_limits<float>::infinity();

// Owns the bytes of a tensor of `n` elements of `dtype`, all finite, with `bad` at `bad_at`.
struct Owned {
  std::vector<uint8_t> bytes;
  TensorView view;
};
Owned MakeTensor(DType dtype, std::vector<int64_t> shape,
                 std::vector<std::pair<int64_t, float>> bad = {}) {
  Owned t;
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  t.bytes.resize(static_cast<size_t>(n) * DTypeSize(dtype));
  auto put = [&](int64_t i, float v) {
    if (dtype == DType::kF32) {
      std::memcpy(t.bytes.data() + 4 * i, &v, 4);
    } else {
      const uint16_t h = dtype == DType::kF16 ? F32ToF16(v) : F32ToBf16(v);
      std::memcpy(t.bytes.data() + 2 * i, &h, 2);
    }
  };
  // Large finite values too: the largest f16 and bf16 numbers must not be flagged.
  for (int64_t i = 0; i < n; ++i)
    put(i, (i % 7 == 0) ? (dtype == DType::kF16 ? 65504.f : 1e30f)
                        : 0.001f * static_cast<float>(i % 1000));
  for (const auto& [i, v] : bad) put(i, v);
  t.view.name = "t";
  t.view.dtype = dtype;
  t.view.shape = std::move(shape);
  t.view.data = t.bytes.data();
  t.view.nbytes = t.bytes.size();
  return t;
}

TEST(FiniteCheckTest, FindsTheFirstNanOrInfInEveryFloatDtype) {
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
    EXPECT_EQ(FirstNonFiniteIndex(MakeTensor(dtype, {1000}).view), -1);
    for (float bad : {kNaN, kInf, -kInf}) {
      for (int64_t at : {int64_t{0}, int64_t{4095}, int64_t{4096}, int64_t{9999}}) {
        const Owned t = MakeTensor(dtype, {10000}, {{at, bad}, {at + (at < 9999 ? 1 : 0), kNaN}});
        EXPECT_EQ(FirstNonFiniteIndex(t.view), at) << DTypeName(dtype) << " " << bad << " " << at;
      }
    }
  }
  // A view whose data is not naturally aligned (hand-built; checkpoints are aligned) works too.
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
    const Owned t = MakeTensor(dtype, {5000}, {{4321, kNaN}});
    std::vector<uint8_t> shifted(t.bytes.size() + 1);
    std::memcpy(shifted.data() + 1, t.bytes.data(), t.bytes.size());
    TensorView v = t.view;
    v.data = shifted.data() + 1;
    EXPECT_EQ(FirstNonFiniteIndex(v), 4321) << DTypeName(dtype);
  }
  // Integer tensors (SpQR codes) are not float data.
  TensorView codes;
  codes.dtype = DType::kU32;
  std::vector<uint32_t> all_ones(16, 0xffffffffu);
  codes.shape = {16};
  codes.data = all_ones.data();
  codes.nbytes = 64;
  EXPECT_EQ(FirstNonFiniteIndex(codes), -1);
}

TEST(FiniteCheckTest, ParallelScanReportsTheFirstTensorAndIndexForAnyThreadCount) {
  // Three tensors of several 1M-element chunks; the second and third hold bad values, the
  // second's first one in a late chunk, after another bad value in a later chunk of tensor 3.
  const Owned a = MakeTensor(DType::kBF16, {3000, 1000});
  const Owned b = MakeTensor(DType::kF16, {2500, 1000}, {{2'200'001, kInf}, {2'300'000, kNaN}});
  const Owned c = MakeTensor(DType::kF32, {2100, 1000}, {{5, kNaN}});
  TensorView va = a.view, vb = b.view, vc = c.view;
  va.name = "a";
  vb.name = "model.layers.3.mlp.up_proj.weight";
  vc.name = "c";
  for (int threads : {1, 2, 3, 8}) {
    const absl::Status st = CheckTensorsFinite({&va, &vb, &vc}, threads);
    EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss) << st;
    EXPECT_TRUE(absl::StrContains(st.message(), "'model.layers.3.mlp.up_proj.weight'")) << st;
    EXPECT_TRUE(absl::StrContains(st.message(), "flat index 2200001 (row 2200, column 1)")) << st;
  }
  EXPECT_TRUE(CheckTensorsFinite({&va}, 2).ok());
}

class FiniteWeightsLoadTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = new fs::path(fs::temp_directory_path() / ("spqr_finite_" + std::to_string(getpid())));
    fs::remove_all(*root_);
    fs::create_directories(*root_);
    ModelQuantizeJob job;
    job.model_dir = TestModel();
    job.calibration_text = std::string(SPQR_SOURCE_DIR) + "/tools/test_model_text.txt";
    job.output_dir = (*root_ / "spqr").string();
    job.nsamples = 2;
    job.seqlen = 32;
    job.threads = 1;
    auto report = QuantizeModel(job, nullptr);
    ASSERT_TRUE(report.ok()) << report.status();
  }
  static void TearDownTestSuite() {
    fs::remove_all(*root_);
    delete root_;
  }
  static std::string TestModel() { return std::string(SPQR_SOURCE_DIR) + "/tests/data/test-model"; }
  static std::string CopyOf(const std::string& src, const std::string& name) {
    const fs::path dst = *root_ / name;
    fs::remove_all(dst);
    fs::copy(src, dst, fs::copy_options::recursive);
    return dst.string();
  }
  // Puts bf16 `value` at element `index` of `tensor` (the test model is bf16) and expects
  // LoadModel to refuse with DATA_LOSS naming the tensor and index.
  static void ExpectRefused(const std::string& dir, const std::string& tensor, int64_t index,
                            float value, bool refresh_crc) {
    const uint16_t h = F32ToBf16(value);
    damage::PatchTensor(dir, tensor, static_cast<size_t>(index) * 2, &h, 2);
    if (refresh_crc) damage::RefreshShardCrcs(dir);
    ModelLoadOptions options;
    options.backend = "cpu";
    options.num_threads = 2;
    auto model = LoadModel(dir, options);
    ASSERT_FALSE(model.ok()) << tensor;
    EXPECT_EQ(model.status().code(), absl::StatusCode::kDataLoss) << model.status();
    EXPECT_TRUE(absl::StrContains(model.status().message(), "'" + tensor + "'")) << model.status();
    EXPECT_TRUE(absl::StrContains(model.status().message(), absl::StrCat("flat index ", index)))
        << model.status();
  }
  static fs::path* root_;
};
fs::path* FiniteWeightsLoadTest::root_ = nullptr;

TEST_F(FiniteWeightsLoadTest, DenseModelWithANanOrInfAnywhereIsRefused) {
  const std::vector<std::tuple<std::string, int64_t, float>> cases = {
      {"model.embed_tokens.weight", 12345, kNaN},
      {"model.layers.0.input_layernorm.weight", 7, kInf},
      {"model.layers.1.post_attention_layernorm.weight", 127, -kInf},
      {"model.layers.0.self_attn.q_proj.weight", 0, kNaN},
      {"model.layers.1.self_attn.v_proj.weight", 4000, kNaN},
      {"model.layers.1.mlp.down_proj.weight", 49151, kInf},
      {"model.norm.weight", 64, kNaN},
      {"lm_head.weight", 65535, kNaN},
  };
  int i = 0;
  for (const auto& [tensor, index, value] : cases) {
    ExpectRefused(CopyOf(TestModel(), absl::StrCat("dense", i++)), tensor, index, value, false);
  }
}

TEST_F(FiniteWeightsLoadTest, SpqrModelWithANanInItsDenseTensorsIsRefused) {
  // Past the shard CRC (re-recorded), the finite check itself must catch it.
  ExpectRefused(CopyOf((*root_ / "spqr").string(), "spqr_embed"), "model.embed_tokens.weight", 99,
                kNaN, true);
  ExpectRefused(CopyOf((*root_ / "spqr").string(), "spqr_norm"),
                "model.layers.1.input_layernorm.weight", 3, kInf, true);
  ExpectRefused(CopyOf((*root_ / "spqr").string(), "spqr_head"), "lm_head.weight", 100, kNaN, true);
}

TEST_F(FiniteWeightsLoadTest, SpqrLayersFp16ValuesAreValidatedToo) {
  // The packed layers' fp16 statistics are checked by ValidateSpqrLayer (engine/format); here
  // a NaN second-level statistic, with the layer CRC and shard CRC both made consistent again,
  // so only the value check can refuse it.
  const std::string dir = CopyOf((*root_ / "spqr").string(), "spqr_stat");
  const std::string prefix = "model.layers.0.self_attn.k_proj";
  const uint16_t nan16 = 0x7e00;
  damage::PatchTensor(dir, prefix + ".spqr_second_level", 2, &nan16, 2);
  auto file = SafetensorsFile::Open(damage::Locate(dir, prefix + ".spqr_meta").file);
  ASSERT_TRUE(file.ok());
  // Recompute the layer CRC over the payload tensors in their documented order.
  uint32_t crc = 0;
  for (const char* suffix :
       {"spqr_weight_codes", "spqr_scale_codes", "spqr_zero_codes", "spqr_second_level",
        "spqr_outlier_row_offsets", "spqr_outlier_cols", "spqr_outlier_values", "spqr_perm"}) {
    const TensorView* v = (*file)->Find(prefix + "." + suffix);
    ASSERT_NE(v, nullptr) << suffix;
    crc = Crc32(v->data, v->nbytes, crc);
  }
  file->reset();
  damage::PatchTensor(dir, prefix + ".spqr_meta", 4 * kMetaCrc32, &crc, 4);
  damage::RefreshShardCrcs(dir);
  ModelLoadOptions options;
  options.backend = "cpu";
  auto model = LoadModel(dir, options);
  ASSERT_FALSE(model.ok());
  EXPECT_EQ(model.status().code(), absl::StatusCode::kDataLoss) << model.status();
  EXPECT_TRUE(absl::StrContains(model.status().message(), "non-finite second-level"))
      << model.status();
  EXPECT_TRUE(absl::StrContains(model.status().message(), prefix)) << model.status();
}

}  // namespace
}  // namespace spqr
