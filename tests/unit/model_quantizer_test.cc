// End to end over the committed test model: spqr-quantize's pipeline writes a directory the
// engine's checkpoint reader opens, every SpQR layer loads and decodes, and the job's error paths.
#include "quantizer/model_quantizer.h"

#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "engine/format/spqr_model.h"
#include "engine/format/spqr_tensors.h"
#include "engine/model/safetensors.h"
#include "gtest/gtest.h"
#include "quantizer/block_forward.h"
#include "quantizer/job_file.h"
#include "quantizer/perplexity.h"

namespace spqr {
namespace {
namespace fs = std::filesystem;

std::string Slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

class ModelQuantizerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() /
            ("spqr_mq_" + std::to_string(getpid()) + "_" +
             ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(root_);
    fs::create_directories(root_);
    job_.model_dir = std::string(SPQR_SOURCE_DIR) + "/tests/data/test-model";
    job_.calibration_text = std::string(SPQR_SOURCE_DIR) + "/tools/test_model_text.txt";
    job_.output_dir = (root_ / "out").string();
    job_.nsamples = 4;
    job_.seqlen = 32;
    job_.seed = 5;
    job_.threads = 1;
    job_.layer.tau = 0.2;
  }
  void TearDown() override { fs::remove_all(root_); }
  fs::path root_;
  ModelQuantizeJob job_;
};

TEST_F(ModelQuantizerTest, WritesALoadableSpqrModel) {
  int progress_lines = 0;
  auto report = QuantizeModel(job_, [&](const std::string&) { ++progress_lines; });
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(progress_lines, 2 * 7 + 2);
  ASSERT_EQ(report->layers.size(), 14u);
  ASSERT_EQ(report->blocks.size(), 2u);
  EXPECT_GT(report->outliers, 0);
  EXPECT_GT(report->real_bits, report->formula_bits);
  for (const BlockReport& b : report->blocks) {
    EXPECT_GT(b.relative_output_error, 0.0);
    EXPECT_LT(b.relative_output_error, 1.0);
  }
  // No temporary directory left behind.
  int entries = 0;
  for (const auto& e : fs::directory_iterator(root_)) {
    ++entries;
    EXPECT_EQ(e.path().filename(), "out");
  }
  EXPECT_EQ(entries, 1);
  for (const char* f : {"config.json", "tokenizer.model", "model.safetensors.index.json",
                        "quantization_report.json", "quantization_report.txt"}) {
    EXPECT_TRUE(fs::exists(fs::path(job_.output_dir) / f)) << f;
  }
  // config.json carries the quantization block; shard checksums verify.
  auto info = ParseSpqrQuantizationConfig(Slurp(job_.output_dir + "/config.json"), "config.json");
  ASSERT_TRUE(info.ok()) << info.status();
  ASSERT_TRUE(info->has_value());
  EXPECT_EQ((*info)->method, "spqr");
  EXPECT_EQ((*info)->wbits, 3);
  EXPECT_DOUBLE_EQ((*info)->tau, 0.2);
  EXPECT_EQ((*info)->shard_crc32.size(), 3u);
  auto ckpt = Checkpoint::Open(job_.output_dir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_TRUE(VerifyShardChecksums(**ckpt, **info).ok());
  const TensorLookup lookup = [&](const std::string& n) { return (*ckpt)->Find(n); };
  int64_t outliers = 0;
  for (const LayerReport& l : report->layers) {
    EXPECT_EQ((*ckpt)->Find(l.name + ".weight"), nullptr) << "dense weight left for " << l.name;
    auto layer = SpqrLayerFromTensors(lookup, l.name);
    ASSERT_TRUE(layer.ok()) << layer.status();
    EXPECT_EQ(layer->out_features, l.out_features);
    outliers += layer->num_outliers();
    EXPECT_TRUE(DequantizeSpqrLayer(*layer).ok());
  }
  EXPECT_EQ(outliers, report->outliers);
  EXPECT_NE((*ckpt)->Find("model.embed_tokens.weight"), nullptr);
  EXPECT_NE((*ckpt)->Find("model.layers.1.post_attention_layernorm.weight"), nullptr);
  // The quantized model's first projection decodes close to the original weights.
  auto original = Checkpoint::Open(job_.model_dir);
  ASSERT_TRUE(original.ok());
  const TensorView* w = (*original)->Find("model.layers.0.mlp.up_proj.weight");
  ASSERT_NE(w, nullptr);
  const std::vector<float> wf = TensorToF32(*w);
  auto up = SpqrLayerFromTensors(lookup, "model.layers.0.mlp.up_proj");
  ASSERT_TRUE(up.ok());
  auto dense = DequantizeSpqrLayer(*up);
  ASSERT_TRUE(dense.ok());
  double err = 0, norm = 0;
  for (size_t i = 0; i < wf.size(); ++i) {
    err += (wf[i] - (*dense)[i]) * (wf[i] - (*dense)[i]);
    norm += wf[i] * wf[i];
  }
  EXPECT_LT(err / norm, 0.05);
}

TEST_F(ModelQuantizerTest, DeterministicForSeedAndThreads) {
  ASSERT_TRUE(QuantizeModel(job_, nullptr).ok());
  ModelQuantizeJob again = job_;
  again.output_dir = (root_ / "again").string();
  ASSERT_TRUE(QuantizeModel(again, nullptr).ok());
  for (const char* shard : {"model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
                            "model-00003-of-00003.safetensors"}) {
    EXPECT_EQ(Slurp(job_.output_dir + "/" + shard), Slurp(again.output_dir + "/" + shard)) << shard;
  }
}

// Windows, Hessian panels and layers run in parallel with serial products inside, so the
// written model is the same bytes for every thread count.
TEST_F(ModelQuantizerTest, OutputDoesNotDependOnTheThreadCount) {
  auto one = QuantizeModel(job_, nullptr);
  ASSERT_TRUE(one.ok()) << one.status();
  for (const int threads : {2, 3}) {
    ModelQuantizeJob other = job_;
    other.threads = threads;
    other.output_dir = (root_ / ("threads" + std::to_string(threads))).string();
    auto report = QuantizeModel(other, nullptr);
    ASSERT_TRUE(report.ok()) << report.status();
    for (const char* f : {"config.json", "model-00001-of-00003.safetensors",
                          "model-00002-of-00003.safetensors", "model-00003-of-00003.safetensors"}) {
      EXPECT_EQ(Slurp(job_.output_dir + "/" + f), Slurp(other.output_dir + "/" + f))
          << f << " with " << threads << " threads";
    }
    ASSERT_EQ(report->blocks.size(), one->blocks.size());
    for (size_t b = 0; b < report->blocks.size(); ++b) {
      EXPECT_EQ(report->blocks[b].relative_output_error, one->blocks[b].relative_output_error);
      // The three timed phases are parts of the block's time.
      const BlockReport& r = report->blocks[b];
      EXPECT_GE(r.forward_seconds, 0.0);
      EXPECT_GE(r.layers_seconds, 0.0);
      EXPECT_GE(r.next_inputs_seconds, 0.0);
      EXPECT_LE(r.forward_seconds + r.layers_seconds + r.next_inputs_seconds, r.seconds + 1e-6);
    }
  }
}

TEST_F(ModelQuantizerTest, RefusesToOverwriteAnEarlierOutputWithoutForce) {
  ASSERT_TRUE(QuantizeModel(job_, nullptr).ok());
  auto report = QuantizeModel(job_, nullptr);
  ASSERT_FALSE(report.ok());
  EXPECT_EQ(report.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_NE(report.status().message().find("--force"), std::string::npos);
  job_.force = true;
  job_.layer.method = SpqrLayerConfig::Method::kRtn;
  job_.layer.act_order = false;
  job_.layer.tau = std::numeric_limits<double>::infinity();
  job_.layer.stats_bits = 16;
  EXPECT_TRUE(QuantizeModel(job_, nullptr).ok());
}

TEST_F(ModelQuantizerTest, ClearErrors) {
  {
    ModelQuantizeJob j = job_;
    j.nsamples = 100000;
    auto r = QuantizeModel(j, nullptr);
    ASSERT_FALSE(r.ok());
    EXPECT_NE(r.status().message().find("nsamples*seqlen"), std::string::npos) << r.status();
  }
  {
    ModelQuantizeJob j = job_;
    j.layer.beta1 = 48;  // does not divide 128
    auto r = QuantizeModel(j, nullptr);
    ASSERT_FALSE(r.ok());
    EXPECT_NE(r.status().message().find("beta1=48"), std::string::npos) << r.status();
  }
  {
    ModelQuantizeJob j = job_;
    j.layer.stats_bits = 2;
    auto r = QuantizeModel(j, nullptr);
    ASSERT_FALSE(r.ok());
    EXPECT_NE(r.status().message().find("stats_bits"), std::string::npos) << r.status();
  }
  {
    ModelQuantizeJob j = job_;
    j.model_dir = (root_ / "missing").string();
    EXPECT_FALSE(QuantizeModel(j, nullptr).ok());
  }
  EXPECT_FALSE(fs::exists(job_.output_dir));
}

TEST(SpqrQuantizationConfigTest, DenseAndUnknownVersion) {
  auto none = ParseSpqrQuantizationConfig(R"({"model_type": "llama"})", "c");
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->has_value());
  auto future = ParseSpqrQuantizationConfig(
      R"({"quantization_config": {"quant_method": "spqr", "format_version": 9}})", "c");
  ASSERT_FALSE(future.ok());
  EXPECT_EQ(future.status().code(), absl::StatusCode::kFailedPrecondition);
  auto other =
      ParseSpqrQuantizationConfig(R"({"quantization_config": {"quant_method": "awq"}})", "c");
  EXPECT_FALSE(other.ok());
}

// Found by model_config_fuzz: a non-string quant_method threw out of the parser, and out-of-range
// numbers were converted silently (or with undefined behaviour for floats). Each is refused,
// naming the key.
TEST(SpqrQuantizationConfigTest, WrongTypesAndRangesAreRefusedNamingTheKey) {
  const std::string head =
      R"({"quantization_config": {"quant_method": "spqr", "format_version": 1, "method": "spqr",
          "wbits": 4, "beta1": 16, "beta2": 16, "stats_bits": 3, "tau": 0.2)";
  auto ok = ParseSpqrQuantizationConfig(head + "}}", "c");
  ASSERT_TRUE(ok.ok()) << ok.status();
  ASSERT_TRUE(ok->has_value());
  EXPECT_EQ((*ok)->wbits, 4);
  const std::pair<std::string, std::string> cases[] = {
      {R"({"quantization_config": {"quant_method": 0}})", "quant_method"},
      {R"({"quantization_config": {"quant_method": "spqr", "format_version": 1e300}})",
       "format_version"},
      {head + R"(, "wbits": 1e300}})", "wbits"},
      {head + R"(, "beta1": 4294967312}})", "beta1"},
      {head + R"(, "stats_bits": -3}})", "stats_bits"},
      {head + R"(, "tau": "0.2"}})", "tau"},
      {head + R"(, "lambda": "x"}})", "lambda"},
      {head + R"(, "calibration": {"nsamples": 2.5}}})", "nsamples"},
      {head + R"(, "shard_crc32": {"model.safetensors": -1}}})", "model.safetensors"},
      {head + R"(, "shard_crc32": {"model.safetensors": 4294967296}}})", "model.safetensors"},
      {head + R"(, "shard_crc32": [1]}})", "shard_crc32"},
  };
  for (const auto& [text, key] : cases) {
    auto info = ParseSpqrQuantizationConfig(text, "c");
    ASSERT_FALSE(info.ok()) << text;
    EXPECT_EQ(info.status().code(), absl::StatusCode::kInvalidArgument) << text;
    EXPECT_NE(info.status().message().find(key), std::string::npos) << info.status();
  }
}

}  // namespace
}  // namespace spqr

namespace spqr {
namespace {

TEST_F(ModelQuantizerTest, PerplexityOfQuantizedModelsTracksFp16) {
  const std::string text = job_.calibration_text;
  PerplexityOptions eval;  // the engine forward, exact kernels
  eval.seqlen = 64;
  eval.max_windows = 3;
  eval.threads = 1;
  auto fp = EvaluatePerplexity(job_.model_dir, text, eval);
  ASSERT_TRUE(fp.ok()) << fp.status();
  EXPECT_EQ(fp->windows, 3);
  EXPECT_EQ(fp->tokens_scored, 3 * 63);
  EXPECT_NEAR(fp->ppl, std::exp(fp->mean_loss), 1e-9 * fp->ppl);
  job_.layer.wbits = 4;
  ASSERT_TRUE(QuantizeModel(job_, nullptr).ok());
  auto sp = EvaluatePerplexity(job_.output_dir, text, eval);
  ASSERT_TRUE(sp.ok()) << sp.status();
  ModelQuantizeJob rtn = job_;
  rtn.output_dir = (root_ / "rtn2").string();
  rtn.layer.method = SpqrLayerConfig::Method::kRtn;
  rtn.layer.act_order = false;
  rtn.layer.tau = std::numeric_limits<double>::infinity();
  rtn.layer.wbits = 2;
  rtn.layer.beta1 = 0;
  rtn.layer.stats_bits = 16;
  ASSERT_TRUE(QuantizeModel(rtn, nullptr).ok());
  auto rt = EvaluatePerplexity(rtn.output_dir, text, eval);
  ASSERT_TRUE(rt.ok()) << rt.status();
  EXPECT_LT(std::fabs(sp->mean_loss - fp->mean_loss), 0.05);
  EXPECT_LT(std::fabs(sp->mean_loss - fp->mean_loss), std::fabs(rt->mean_loss - fp->mean_loss))
      << "fp16 " << fp->mean_loss << " spqr w4 " << sp->mean_loss << " rtn w2 " << rt->mean_loss;
}

}  // namespace
}  // namespace spqr

namespace spqr {
namespace {

TEST(JobFileTest, AppliesKeysAndRejectsUnknownOnes) {
  ModelQuantizeJob job;
  ASSERT_TRUE(ApplyJobYaml("model: m\nout: o\ncalibration: c\nnsamples: 7\nseqlen: 64\nseed: 3\n"
                           "method: gptq\nwbits: 4\nbeta1: 0\nbeta2: 8\nstats_bits: 16\n"
                           "tau: inf\nlambda: 0.01\nact_order: false\nthreads: 2\nforce: true\n",
                           "job.yaml", &job)
                  .ok());
  EXPECT_EQ(job.model_dir, "m");
  EXPECT_EQ(job.nsamples, 7);
  EXPECT_EQ(job.layer.method, SpqrLayerConfig::Method::kGptq);
  EXPECT_EQ(job.layer.beta1, 0);
  EXPECT_TRUE(std::isinf(job.layer.tau));
  EXPECT_DOUBLE_EQ(job.layer.lambda, 0.01);
  EXPECT_FALSE(job.layer.act_order);
  EXPECT_TRUE(job.force);
  ASSERT_TRUE(ApplyJobYaml("tau: 0.25\n", "job.yaml", &job).ok());
  EXPECT_DOUBLE_EQ(job.layer.tau, 0.25);
  absl::Status st = ApplyJobYaml("wbit: 3\n", "job.yaml", &job);
  EXPECT_NE(st.message().find("unknown key 'wbit'"), std::string::npos) << st;
  st = ApplyJobYaml("wbits: three\n", "job.yaml", &job);
  EXPECT_NE(st.message().find("'wbits'"), std::string::npos) << st;
  st = ApplyJobYaml("method: awq\n", "job.yaml", &job);
  EXPECT_NE(st.message().find("spqr, gptq or rtn"), std::string::npos) << st;
}

}  // namespace
}  // namespace spqr
