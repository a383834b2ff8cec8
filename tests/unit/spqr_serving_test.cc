// Serving SpQR model directories on the CPU backend: the committed test model is quantized with
// spqr-quantize's pipeline (QuantizeModel) into a temporary directory once per test program, then
//  - LoadModel binds every decoder projection as a packed SpQR layer (never dense) and the
//  backend's
//    logits equal a dense f32 model built from the format's reference decoder
//    (DequantizeSpqrLayer);
//  - greedy generation through Engine equals a step-by-step greedy loop over the same backend;
//  - the engine's total NLL on fixed windows, computed here through LoadModel's backend, equals
//    the reference forward of EvaluatePerplexity (`spqr-eval --forward reference`) for the same
//    model and windows;
//  - a corrupted shard or an unknown format version is refused with an error naming the file.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <mutex>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "engine/backend/backend.h"
#include "engine/backend/cpu/linear.h"
#include "engine/format/spqr_layer.h"
#include "engine/format/spqr_matmul.h"
#include "engine/format/spqr_tensors.h"
#include "engine/model/safetensors.h"
#include "engine/runtime/engine.h"
#include "engine/runtime/model.h"
#include "gtest/gtest.h"
#include "quantizer/model_quantizer.h"
#include "quantizer/perplexity.h"
#include "tests/unit/dequantized_model_writer.h"

namespace spqr {
namespace {
namespace fs = std::filesystem;

const std::string kSourceModel = std::string(SPQR_SOURCE_DIR) + "/tests/data/test-model";
const std::string kText = std::string(SPQR_SOURCE_DIR) + "/tools/test_model_text.txt";

std::string Slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}
void Spit(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
}

// All logits of one sequence run as a single prefill (num_logits = all tokens).
std::vector<float> PrefillLogits(Backend& backend, const std::vector<int32_t>& tokens,
                                 int32_t* vocab) {
  KvPoolShape shape;
  shape.num_blocks = 16;
  shape.block_size = 16;
  EXPECT_TRUE(backend.AllocateKvPool(shape).ok());
  std::vector<int32_t> table(16);
  for (int i = 0; i < 16; ++i) table[i] = i;
  StepPlan plan;
  SequenceStep s;
  s.tokens = tokens;
  s.start_pos = 0;
  s.block_table = table;
  s.num_logits = static_cast<int32_t>(tokens.size());
  plan.seqs.push_back(s);
  StepOutput out;
  const absl::Status st = backend.Forward(plan, &out);
  EXPECT_TRUE(st.ok()) << st;
  *vocab = out.vocab_size;
  return out.logits;
}

class SpqrServingTest : public ::testing::Test {
 protected:
  static ModelQuantizeJob BaseJob() {
    ModelQuantizeJob job;
    job.model_dir = kSourceModel;
    job.calibration_text = kText;
    job.output_dir = (*root_ / "spqr").string();
    job.nsamples = 4;
    job.seqlen = 32;
    job.seed = 5;
    job.threads = 1;
    job.layer.tau = 0.2;  // some outliers, so the kernel's outlier path is exercised
    return job;
  }
  static void SetUpTestSuite() {
    root_ = new fs::path(fs::temp_directory_path() / ("spqr_serving_" + std::to_string(getpid())));
    fs::remove_all(*root_);
    fs::create_directories(*root_);
    ModelQuantizeJob job = BaseJob();
    auto report = QuantizeModel(job, [](const std::string&) {});
    ASSERT_TRUE(report.ok()) << report.status();
    ASSERT_GT(report->outliers, 0);
    const absl::Status st =
        WriteDequantizedModel(job.output_dir, kSourceModel, (*root_ / "dense").string());
    ASSERT_TRUE(st.ok()) << st;
  }
  static void TearDownTestSuite() {
    fs::remove_all(*root_);
    delete root_;
  }
  static std::string SpqrDir() { return (*root_ / "spqr").string(); }
  static std::string DenseDir() { return (*root_ / "dense").string(); }
  // `kernel`: the CPU backend's SpQR kernel; most tests check the exact one bit for bit, the int8
  // one has its own tests below.
  static std::unique_ptr<LoadedModel> Load(const std::string& dir,
                                           const std::string& kernel = "exact") {
    ModelLoadOptions options;
    options.backend = "cpu";
    options.num_threads = 2;
    options.spqr_cpu_kernel = kernel;
    // These tests are about the SpQR kernels and the exact path's bits; the dense layers (lm_head)
    // stay on the exact kernel, not the bf16 default of CPUs with AVX512-BF16.
    options.dense_cpu_kernel = "exact";
    auto model = LoadModel(dir, options);
    EXPECT_TRUE(model.ok()) << model.status();
    return model.ok() ? std::move(*model) : nullptr;
  }
  // A copy of the SpQR directory that a test may damage.
  static std::string CopyOfSpqrDir(const std::string& name) {
    const fs::path dst = *root_ / name;
    fs::remove_all(dst);
    fs::copy(SpqrDir(), dst, fs::copy_options::recursive);
    return dst.string();
  }
  static fs::path* root_;
};
fs::path* SpqrServingTest::root_ = nullptr;

TEST_F(SpqrServingTest, BindsPackedLayersAndReportsTheQuantization) {
  auto model = Load(SpqrDir());
  ASSERT_NE(model, nullptr);
  for (const DecoderLayerWeights& l : model->weights->layers) {
    for (const LinearTensors* lin :
         {&l.q_proj, &l.k_proj, &l.v_proj, &l.o_proj, &l.gate_proj, &l.up_proj, &l.down_proj}) {
      ASSERT_NE(lin->spqr, nullptr);
      EXPECT_EQ(lin->weight.data, nullptr);  // kept packed: no dense copy
    }
  }
  EXPECT_EQ(model->weights->lm_head.spqr, nullptr);  // lm_head is not quantized
  const QuantizationInfo& q = model->quantization;
  EXPECT_EQ(q.method, "spqr");
  EXPECT_EQ(q.format_version, kSpqrFormatVersion);
  EXPECT_EQ(q.wbits, 3);
  EXPECT_EQ(q.beta1, 16);
  EXPECT_EQ(q.beta2, 16);
  EXPECT_EQ(q.stats_bits, 3);
  EXPECT_GT(q.outlier_share, 0.0);
  EXPECT_GT(q.bits_per_param_formula, 3.0);
  EXPECT_GT(q.bits_per_param_real, q.bits_per_param_formula);
  EXPECT_FALSE(q.quantizer_version.empty());
  EXPECT_TRUE(absl::StrContains(q.calibration, "nsamples=4")) << q.calibration;
  // The packed model reads far fewer weight bytes than the dense f32 one.
  auto dense = Load(DenseDir());
  ASSERT_NE(dense, nullptr);
  EXPECT_EQ(dense->quantization.method, "none");
  EXPECT_LT(model->backend->memory_stats().weight_bytes,
            dense->backend->memory_stats().weight_bytes);
}

// Bound: the packed kernel computes every weight bit-identically to DequantizeSpqrLayer and only
// sums in a different order (engine/format/spqr_matmul.h), so per projection the difference is a
// few fp32 roundings of sum|w x|; through 2 blocks and the lm_head this stays below
// 1e-4 * (1 + max|logit|) (measured: 3.6e-6 at max|logit| 4.8, i.e. ~7e-7 relative).
TEST_F(SpqrServingTest, LogitsEqualTheDenseModelOfTheReferenceDecode) {
  auto spqr = Load(SpqrDir());
  auto dense = Load(DenseDir());
  ASSERT_NE(spqr, nullptr);
  ASSERT_NE(dense, nullptr);
  const std::vector<int32_t> tokens =
      spqr->tokenizer->Encode("The quick brown fox jumps over the lazy dog again", true);
  ASSERT_GE(tokens.size(), 6u);
  int32_t vocab_a = 0, vocab_b = 0;
  const std::vector<float> a = PrefillLogits(*spqr->backend, tokens, &vocab_a);
  const std::vector<float> b = PrefillLogits(*dense->backend, tokens, &vocab_b);
  ASSERT_EQ(vocab_a, vocab_b);
  ASSERT_EQ(a.size(), b.size());
  ASSERT_EQ(a.size(), tokens.size() * vocab_a);
  float max_abs = 0.0f, max_diff = 0.0f;
  for (size_t i = 0; i < a.size(); ++i) {
    max_abs = std::max(max_abs, std::fabs(b[i]));
    max_diff = std::max(max_diff, std::fabs(a[i] - b[i]));
  }
  EXPECT_GT(max_abs, 0.1f);
  EXPECT_LE(max_diff, 1e-4f * (1.0f + max_abs)) << "max |logit| " << max_abs;
  std::cout << "max |logit| " << max_abs << ", max |spqr - dense| " << max_diff << "\n";
  // And the quantization changed the model: the source checkpoint's logits differ clearly.
  auto source = Load(kSourceModel);
  ASSERT_NE(source, nullptr);
  int32_t vocab_c = 0;
  const std::vector<float> c = PrefillLogits(*source->backend, tokens, &vocab_c);
  float source_diff = 0.0f;
  for (size_t i = 0; i < a.size(); ++i) source_diff = std::max(source_diff, std::fabs(a[i] - c[i]));
  EXPECT_GT(source_diff, 100 * max_diff);
}

// The int8 kernel (activations rounded to int8 per 16 columns, spqr_tile_kernel.h) stays close to
// the exact kernel: through 2 blocks and the lm_head the logits differ by at most
// 4e-2 * (1 + max|logit|) (measured 0.117 at max|logit| 4.83 on this random-weight model, whose
// unstructured activations are the int8 rounding's worst case), the greedy next token agrees at
// 90 % of positions (measured 48/51), and the int8 kernel is really what runs (it differs from the
// exact kernel).
TEST_F(SpqrServingTest, Int8KernelLogitsStayCloseToTheExactKernel) {
  auto exact = Load(SpqrDir(), "exact");
  auto int8 = Load(SpqrDir(), "int8");
  ASSERT_NE(exact, nullptr);
  ASSERT_NE(int8, nullptr);
  const std::vector<int32_t> tokens = exact->tokenizer->Encode(
      "The quick brown fox jumps over the lazy dog again and again, said the kernel", true);
  int32_t vocab = 0, vocab_b = 0;
  const std::vector<float> a = PrefillLogits(*exact->backend, tokens, &vocab);
  const std::vector<float> b = PrefillLogits(*int8->backend, tokens, &vocab_b);
  ASSERT_EQ(vocab, vocab_b);
  ASSERT_EQ(a.size(), b.size());
  float max_abs = 0.0f, max_diff = 0.0f;
  int same_argmax = 0;
  const int positions = static_cast<int>(tokens.size());
  for (int t = 0; t < positions; ++t) {
    const float* ra = a.data() + static_cast<size_t>(t) * vocab;
    const float* rb = b.data() + static_cast<size_t>(t) * vocab;
    for (int v = 0; v < vocab; ++v) {
      max_abs = std::max(max_abs, std::fabs(ra[v]));
      max_diff = std::max(max_diff, std::fabs(ra[v] - rb[v]));
    }
    same_argmax += std::max_element(ra, ra + vocab) - ra == std::max_element(rb, rb + vocab) - rb;
  }
  std::cout << "max |logit| " << max_abs << ", max |int8 - exact| " << max_diff
            << ", argmax agrees " << same_argmax << "/" << positions << "\n";
  EXPECT_GT(max_diff, 0.0f);
  EXPECT_LE(max_diff, 4e-2f * (1.0f + max_abs));
  EXPECT_GE(same_argmax, positions * 9 / 10);
}

// With the int8 kernel the SpQR codes live once, in the tile layouts: the loaded model's layers
// keep only permutation and second-level values (the layout holds codes, statistics and
// outliers), and the weight bytes the backend holds are at most 1.05x the format's own (measured
// 0.969x on 2026-12-04: the layout adds the padding of the last 16-row tile but drops the format's
// per-row 32-bit word padding of the code rows, and its outlier step masks cost less than the
// format's per-row offsets).
TEST_F(SpqrServingTest, Int8KernelHoldsTheCodesOnce) {
  auto exact = Load(SpqrDir(), "exact");
  auto int8 = Load(SpqrDir(), "int8");
  ASSERT_NE(exact, nullptr);
  ASSERT_NE(int8, nullptr);
  for (const DecoderLayerWeights& l : int8->weights->layers) {
    for (const LinearTensors* lin :
         {&l.q_proj, &l.k_proj, &l.v_proj, &l.o_proj, &l.gate_proj, &l.up_proj, &l.down_proj}) {
      ASSERT_NE(lin->spqr, nullptr);
      EXPECT_TRUE(lin->spqr->weight_codes.empty());
      EXPECT_TRUE(lin->spqr->scale_codes.empty());
      EXPECT_TRUE(lin->spqr->outlier_values.empty());
      EXPECT_TRUE(lin->spqr->outlier_row_offsets.empty());
      EXPECT_FALSE(lin->spqr->perm.empty());
    }
  }
  const double ratio = static_cast<double>(int8->backend->memory_stats().weight_bytes) /
                       static_cast<double>(exact->backend->memory_stats().weight_bytes);
  std::cout << "int8 / exact resident weight bytes " << ratio << "\n";
  EXPECT_GE(ratio, 0.9);
  EXPECT_LE(ratio, 1.05);
}

// The CPU kernel over T tokens gives every token exactly the format's batch-1 product
// (SpqrMatmul with batch 1), bit for bit, for every projection of the model: the batched decode
// shares each decoded row across tokens without changing any token's arithmetic.
class SpqrKernelPathTest : public SpqrServingTest,
                           public ::testing::WithParamInterface<const char*> {
 protected:
  static void SetUpTestSuite() {
    SpqrServingTest::SetUpTestSuite();
    ModelQuantizeJob job = BaseJob();
    // Variants that take the kernel's other paths: 5-bit codes (unpacked to bytes first) with
    // fp16 statistics, and a group width without a fused path (beta1 = 64: decode, then dot).
    job.layer.wbits = 5;
    job.layer.stats_bits = kFp16Stats;
    job.output_dir = (*root_ / "w5_fp16stats").string();
    auto w5 = QuantizeModel(job, [](const std::string&) {});
    ASSERT_TRUE(w5.ok()) << w5.status();
    job.layer.wbits = 3;
    job.layer.stats_bits = 3;
    job.layer.beta1 = 64;
    job.output_dir = (*root_ / "beta1_64").string();
    auto b64 = QuantizeModel(job, [](const std::string&) {});
    ASSERT_TRUE(b64.ok()) << b64.status();
  }
};

TEST_P(SpqrKernelPathTest, CpuKernelIsBitIdenticalToTheFormatsBatchOneProduct) {
  auto model = Load((*root_ / GetParam()).string());
  ASSERT_NE(model, nullptr);
  const DecoderLayerWeights& l = model->weights->layers[1];
  for (const LinearTensors* lin :
       {&l.q_proj, &l.k_proj, &l.v_proj, &l.o_proj, &l.gate_proj, &l.up_proj, &l.down_proj}) {
    ASSERT_NE(lin->spqr, nullptr);
    const int64_t n = lin->in_features, m = lin->out_features;
    for (int64_t num_tokens : {1, 3, 7}) {
      std::vector<float> x(static_cast<size_t>(num_tokens * n));
      for (size_t i = 0; i < x.size(); ++i) x[i] = std::sin(0.37f * static_cast<float>(i) + 0.1f);
      cpu::PackedActivations packed;
      cpu::PackActivations(x.data(), num_tokens, n, &packed);
      std::vector<float> y(static_cast<size_t>(num_tokens * m));
      cpu::Linear(*lin, packed, y.data(), 2);
      for (int64_t t = 0; t < num_tokens; ++t) {
        std::vector<float> want(static_cast<size_t>(m));
        ASSERT_TRUE(SpqrMatmul(*lin->spqr, x.data() + t * n, 1, want.data()).ok());
        for (int64_t r = 0; r < m; ++r) {
          ASSERT_EQ(y[t * m + r], want[r])
              << "token " << t << " of " << num_tokens << ", row " << r;
        }
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Variants, SpqrKernelPathTest,
                         ::testing::Values("spqr", "w5_fp16stats", "beta1_64"));

// Collects one request's chunks.
struct Collected {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<int32_t> tokens;
  bool done = false;
  FinishReason reason = FinishReason::kNone;
};

// Engine decode (prefill once, then one token per step) gives exactly the tokens of full-prefill
// recomputation, with either kernel: both are per-token deterministic whatever the step holds.
class SpqrEngineKernelTest : public SpqrServingTest,
                             public ::testing::WithParamInterface<const char*> {};

TEST_P(SpqrEngineKernelTest, GreedyGenerationThroughTheEngine) {
  auto reference = Load(SpqrDir(), GetParam());
  ASSERT_NE(reference, nullptr);
  std::vector<int32_t> prompt = reference->tokenizer->Encode("Once upon a time", true);
  constexpr int kNewTokens = 12;
  // Step-by-step greedy reference on a separate instance of the same backend.
  std::vector<int32_t> expected;
  {
    std::vector<int32_t> seq = prompt;
    for (int i = 0; i < kNewTokens; ++i) {
      int32_t vocab = 0;
      const std::vector<float> logits = PrefillLogits(*reference->backend, seq, &vocab);
      const float* last = logits.data() + (seq.size() - 1) * vocab;
      const int32_t next = static_cast<int32_t>(std::max_element(last, last + vocab) - last);
      expected.push_back(next);
      seq.push_back(next);
    }
  }
  EngineOptions options;
  options.kv_cache_bytes = 4 << 20;
  auto engine = Engine::Create(Load(SpqrDir(), GetParam()), options);
  ASSERT_TRUE(engine.ok()) << engine.status();
  GenerateRequest request;
  request.request_id = "greedy";
  request.prompt_tokens = prompt;
  request.sampling.temperature = 0.0f;
  request.stopping.max_new_tokens = kNewTokens;
  request.stopping.ignore_eos = true;
  Collected got;
  ASSERT_TRUE((*engine)
                  ->Submit(request,
                           [&](OutputChunk chunk) {
                             std::lock_guard<std::mutex> lock(got.mu);
                             got.tokens.insert(got.tokens.end(), chunk.token_ids.begin(),
                                               chunk.token_ids.end());
                             if (chunk.finished) {
                               got.done = true;
                               got.reason = chunk.finish_reason;
                             }
                             got.cv.notify_all();
                           })
                  .ok());
  std::unique_lock<std::mutex> lock(got.mu);
  ASSERT_TRUE(got.cv.wait_for(lock, std::chrono::seconds(30), [&] { return got.done; }));
  EXPECT_EQ(got.reason, FinishReason::kLength);
  EXPECT_EQ(got.tokens, expected);
}

INSTANTIATE_TEST_SUITE_P(Kernels, SpqrEngineKernelTest, ::testing::Values("exact", "int8"));

// The engine's total NLL over spqr-eval's windows (same tokenization: whole text, no BOS,
// non-overlapping windows of seqlen, tokens 1..L-1 scored) equals EvaluatePerplexity's reference
// forward, an independent fp32 forward over DequantizeSpqrLayer weights. Tolerance: relative
// 1e-6 of the total (both are fp32 forwards that differ only in summation order and accumulate
// the NLL in double; measured 1.2e-8 relative: 874.451202 vs 874.451192 nats over 4 windows of 32).
TEST_F(SpqrServingTest, TotalNllEqualsSpqrEval) {
  constexpr int kSeqlen = 32;
  constexpr int kWindows = 4;
  PerplexityOptions options;
  options.forward = PerplexityForward::kReference;
  options.seqlen = kSeqlen;
  options.max_windows = kWindows;
  options.threads = 1;
  auto reference = EvaluatePerplexity(SpqrDir(), kText, options);
  ASSERT_TRUE(reference.ok()) << reference.status();
  ASSERT_EQ(reference->windows, kWindows);

  auto model = Load(SpqrDir());
  ASSERT_NE(model, nullptr);
  const std::vector<int32_t> ids = model->tokenizer->Encode(Slurp(kText), false);
  ASSERT_GE(ids.size(), static_cast<size_t>(kSeqlen * kWindows));
  double total_nll = 0.0;
  for (int w = 0; w < kWindows; ++w) {
    const std::vector<int32_t> window(ids.begin() + w * kSeqlen, ids.begin() + (w + 1) * kSeqlen);
    int32_t vocab = 0;
    const std::vector<float> logits = PrefillLogits(*model->backend, window, &vocab);
    for (int t = 0; t + 1 < kSeqlen; ++t) {
      const float* row = logits.data() + static_cast<size_t>(t) * vocab;
      const float mx = *std::max_element(row, row + vocab);
      double z = 0.0;
      for (int v = 0; v < vocab; ++v) z += std::exp(static_cast<double>(row[v]) - mx);
      total_nll += (std::log(z) + mx) - row[window[t + 1]];
    }
  }
  EXPECT_NEAR(total_nll, reference->total_nll, 1e-6 * reference->total_nll);
  std::cout.precision(12);
  std::cout << "engine total NLL " << total_nll << ", spqr-eval " << reference->total_nll << "\n";
  // A dense checkpoint's NLL is clearly different: the comparison can fail.
  auto source = EvaluatePerplexity(kSourceModel, kText, options);
  ASSERT_TRUE(source.ok()) << source.status();
  EXPECT_GT(std::fabs(source->total_nll - total_nll), 1e-3 * total_nll);
}

TEST_F(SpqrServingTest, CorruptedShardIsRefusedNamingTheFile) {
  const std::string dir = CopyOfSpqrDir("corrupt");
  std::string shard;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (e.path().extension() == ".safetensors") shard = e.path().string();
  }
  ASSERT_FALSE(shard.empty());
  std::string bytes = Slurp(shard);
  bytes[bytes.size() - 3] ^= 0x10;  // a payload byte, the header stays valid
  Spit(shard, bytes);
  ModelLoadOptions options;
  options.backend = "cpu";
  auto model = LoadModel(dir, options);
  ASSERT_FALSE(model.ok());
  EXPECT_EQ(model.status().code(), absl::StatusCode::kDataLoss) << model.status();
  std::cout << model.status() << "\n";
  EXPECT_TRUE(absl::StrContains(model.status().message(), fs::path(shard).filename().string()))
      << model.status();
}

TEST_F(SpqrServingTest, UnknownFormatVersionIsRefusedNamingTheFile) {
  const std::string dir = CopyOfSpqrDir("version");
  std::string config = Slurp(dir + "/config.json");
  const std::string key = "\"format_version\": 1";
  const size_t at = config.find(key);
  ASSERT_NE(at, std::string::npos) << config;
  config.replace(at, key.size(), "\"format_version\": 99");
  Spit(dir + "/config.json", config);
  ModelLoadOptions options;
  options.backend = "cpu";
  auto model = LoadModel(dir, options);
  ASSERT_FALSE(model.ok());
  EXPECT_EQ(model.status().code(), absl::StatusCode::kFailedPrecondition) << model.status();
  std::cout << model.status() << "\n";
  EXPECT_TRUE(absl::StrContains(model.status().message(), "config.json")) << model.status();
  EXPECT_TRUE(absl::StrContains(model.status().message(), "99")) << model.status();
}

}  // namespace
}  // namespace spqr
