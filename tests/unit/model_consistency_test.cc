// A model directory must be consistent, or refused: quantization_config values that contradict a
// layer's spqr_meta, reported totals that contradict the layers, shards without a checksum entry,
// and untrusted counts in spqr_meta (checked before anything is allocated from them). Each case
// damages a copy of a freshly quantized test model by hand; where the damage would be caught by a
// checksum first, the checksums are re-recorded so that the check under test must catch it.
#include <unistd.h>

#include <filesystem>
#include <limits>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "engine/format/spqr_tensors.h"
#include "engine/runtime/model.h"
#include "gtest/gtest.h"
#include "quantizer/model_quantizer.h"
#include "tests/unit/model_damage_util.h"

namespace spqr {
namespace {
namespace fs = std::filesystem;
using Json = nlohmann::ordered_json;

class ModelConsistencyTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = new fs::path(fs::temp_directory_path() / ("spqr_consist_" + std::to_string(getpid())));
    fs::remove_all(*root_);
    fs::create_directories(*root_);
    ModelQuantizeJob job;
    job.model_dir = std::string(SPQR_SOURCE_DIR) + "/tests/data/test-model";
    job.calibration_text = std::string(SPQR_SOURCE_DIR) + "/tools/test_model_text.txt";
    job.output_dir = (*root_ / "spqr").string();
    job.nsamples = 4;
    job.seqlen = 32;
    job.threads = 1;
    job.layer.tau = 0.2;  // with outliers
    auto report = QuantizeModel(job, nullptr);
    ASSERT_TRUE(report.ok()) << report.status();
    ASSERT_GT(report->outliers, 0);
  }
  static void TearDownTestSuite() {
    fs::remove_all(*root_);
    delete root_;
  }
  static std::string Copy(const std::string& name) {
    const fs::path dst = *root_ / name;
    fs::remove_all(dst);
    fs::copy(*root_ / "spqr", dst, fs::copy_options::recursive);
    return dst.string();
  }
  static absl::Status Load(const std::string& dir) {
    ModelLoadOptions options;
    options.backend = "cpu";
    options.num_threads = 2;
    return LoadModel(dir, options).status();
  }
  // Expects `dir` refused with `code` and every one of `parts` in the message.
  static void ExpectRefused(const std::string& dir, absl::StatusCode code,
                            const std::vector<std::string>& parts) {
    const absl::Status st = Load(dir);
    EXPECT_EQ(st.code(), code) << st;
    for (const std::string& p : parts) EXPECT_TRUE(absl::StrContains(st.message(), p)) << st;
  }
  static fs::path* root_;
};
fs::path* ModelConsistencyTest::root_ = nullptr;

TEST_F(ModelConsistencyTest, TheUndamagedModelLoads) { EXPECT_TRUE(Load(Copy("ok")).ok()); }

TEST_F(ModelConsistencyTest, QuantizationConfigContradictingTheLayersIsRefused) {
  struct Case {
    const char* key;
    int value;
    std::vector<std::string> parts;
  };
  const Case cases[] = {
      {"wbits", 4, {"wbits=3 in its spqr_meta contradicts wbits=4", "model.layers.0"}},
      {"beta1", 32, {"beta1=16 in its spqr_meta contradicts beta1=32"}},
      {"beta1", 0, {"beta1=16 in its spqr_meta contradicts beta1=0", "one group per row"}},
      {"beta2", 8, {"beta2=16 in its spqr_meta contradicts beta2=8"}},
      {"stats_bits", 4, {"stats_bits=3 in its spqr_meta contradicts stats_bits=4"}},
  };
  for (const Case& c : cases) {
    const std::string dir = Copy(absl::StrCat("cfg_", c.key, c.value));
    damage::EditConfig(dir, [&](Json& cfg) { cfg["quantization_config"][c.key] = c.value; });
    ExpectRefused(dir, absl::StatusCode::kInvalidArgument, c.parts);
  }
}

TEST_F(ModelConsistencyTest, OutliersWhereTheConfigAllowsNoneAreRefused) {
  const std::string no_tau = Copy("tau_null");
  damage::EditConfig(no_tau, [](Json& cfg) { cfg["quantization_config"]["tau"] = nullptr; });
  ExpectRefused(no_tau, absl::StatusCode::kInvalidArgument, {"outliers", "tau=null"});
  const std::string gptq = Copy("method_gptq");
  damage::EditConfig(gptq, [](Json& cfg) { cfg["quantization_config"]["method"] = "gptq"; });
  ExpectRefused(gptq, absl::StatusCode::kInvalidArgument, {"outliers", "method=gptq"});
}

TEST_F(ModelConsistencyTest, ReportedTotalsContradictingTheLayersAreRefused) {
  for (const char* key : {"outlier_share", "avg_bits_real", "avg_bits_formula"}) {
    const std::string dir = Copy(absl::StrCat("total_", key));
    damage::EditConfig(dir, [&](Json& cfg) {
      cfg["quantization_config"][key] = cfg["quantization_config"][key].get<double>() * 1.01;
    });
    ExpectRefused(dir, absl::StatusCode::kInvalidArgument, {absl::StrCat(key, "=")});
  }
  // Absent reports are not contradictions (they are optional in the format).
  const std::string absent = Copy("total_absent");
  damage::EditConfig(absent, [](Json& cfg) {
    for (const char* key : {"outlier_share", "avg_bits_real", "avg_bits_formula"}) {
      cfg["quantization_config"].erase(key);
    }
  });
  EXPECT_TRUE(Load(absent).ok());
}

TEST_F(ModelConsistencyTest, AShardWithoutAChecksumEntryIsRefused) {
  const std::string dir = Copy("crc_missing");
  std::string removed;
  damage::EditConfig(dir, [&](Json& cfg) {
    Json& crcs = cfg["quantization_config"]["shard_crc32"];
    removed = crcs.begin().key();
    crcs.erase(removed);
  });
  ExpectRefused(dir, absl::StatusCode::kDataLoss, {removed, "no CRC-32 entry"});
  const std::string none = Copy("crc_none");
  damage::EditConfig(none, [](Json& cfg) { cfg["quantization_config"].erase("shard_crc32"); });
  ExpectRefused(none, absl::StatusCode::kDataLoss, {"no CRC-32 entry"});
}

TEST_F(ModelConsistencyTest, UntrustedCountsInSpqrMetaAreBoundedBeforeAllocation) {
  const std::string prefix = "model.layers.1.mlp.up_proj";
  struct Case {
    int slot;
    uint32_t value;
    std::vector<std::string> parts;
  };
  const Case cases[] = {
      // 4G outliers would have allocated 8 GiB before any other check.
      {kMetaNumOutliers,
       0xffffffffu,
       {prefix + ".spqr_meta", "4294967295 outliers exceed the layer's 49152 weights"}},
      {kMetaNumOutliers, 49152, {prefix + ".spqr_meta", "counts 49152 outliers but"}},
      // A huge shape is compared with the stored tensors (bounded by the file) before copying.
      {kMetaOutFeatures, 0xffffffffu, {prefix + ".spqr_weight_codes", "4294967295"}},
  };
  for (const Case& c : cases) {
    const std::string dir = Copy(absl::StrCat("meta_", c.slot, "_", c.value));
    damage::PatchTensor(dir, prefix + ".spqr_meta", 4 * c.slot, &c.value, 4);
    damage::RefreshShardCrcs(dir);
    ExpectRefused(dir, absl::StatusCode::kInvalidArgument, c.parts);
  }
}

TEST_F(ModelConsistencyTest, AHugeLayerCountInConfigFailsAtTheFirstMissingLayer) {
  // 4e9 layers would be ~1 TB of layer records if sized from the count before binding.
  for (const bool spqr : {false, true}) {
    const fs::path dir = *root_ / (spqr ? "layers_spqr" : "layers_dense");
    fs::remove_all(dir);
    fs::copy(spqr ? *root_ / "spqr" : fs::path(SPQR_SOURCE_DIR) / "tests/data/test-model", dir,
             fs::copy_options::recursive);
    damage::EditConfig(dir.string(), [](Json& cfg) { cfg["num_hidden_layers"] = 4000000000LL; });
    const absl::Status st = Load(dir.string());
    EXPECT_EQ(st.code(), absl::StatusCode::kNotFound) << st;
    EXPECT_TRUE(absl::StrContains(st.message(), "model.layers.2.")) << st;
  }
}

}  // namespace
}  // namespace spqr
