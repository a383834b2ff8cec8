// EvaluatePerplexity's two forwards (quantizer/perplexity.h) on the committed test model and its
// SpQR version (quantized here, once per test program, as spqr-quantize would):
//  - the engine forward with exact kernels agrees with the reference forward on total NLL within
//    kRelTolerance, on the dense and on the SpQR model; the same SpQR model with its outliers
//    dropped lands far outside that band, so a forward that lost the outliers would fail;
//  - the engine forward gives the same bits for any thread count and prefill chunking;
//  - the int8 kernel really runs when asked for, and is reported;
//  - bad options are refused with errors naming the value.
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <iostream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "engine/format/spqr_layer.h"
#include "gtest/gtest.h"
#include "quantizer/model_quantizer.h"
#include "quantizer/perplexity.h"
#include "tests/unit/dequantized_model_writer.h"

namespace spqr {
namespace {
namespace fs = std::filesystem;

const std::string kSourceModel = std::string(SPQR_SOURCE_DIR) + "/tests/data/test-model";
const std::string kText = std::string(SPQR_SOURCE_DIR) + "/tools/test_model_text.txt";

// Engine (exact kernels) vs reference, relative to the total NLL. Both are fp32 forwards over the
// same weight values (the exact SpQR kernel decodes every weight bit-identically to
// DequantizeSpqrLayer) that differ only in summation order, and both accumulate the NLL in double:
// measured 1.0e-9 relative on the SpQR test model (the test prints it). 1e-6 leaves 1000x room
// for another compiler or CPU and is still far below what dropping the outliers costs: 3.5e-3
// relative on this model (printed too), and the test requires at least 100x the tolerance.
constexpr double kRelTolerance = 1e-6;
constexpr int kSeqlen = 64;
constexpr int kWindows = 4;

PerplexityOptions Options(PerplexityForward forward, int threads = 2) {
  PerplexityOptions o;
  o.forward = forward;
  o.seqlen = kSeqlen;
  o.max_windows = kWindows;
  o.threads = threads;
  return o;
}

PerplexityResult Evaluate(const std::string& dir, const PerplexityOptions& options) {
  auto r = EvaluatePerplexity(dir, kText, options);
  EXPECT_TRUE(r.ok()) << r.status();
  return r.ok() ? *r : PerplexityResult();
}

double Relative(double a, double b) { return std::fabs(a - b) / std::fabs(b); }

class PerplexityForwardTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = new fs::path(fs::temp_directory_path() /
                         ("spqr_perplexity_forward_" + std::to_string(getpid())));
    fs::remove_all(*root_);
    fs::create_directories(*root_);
    ModelQuantizeJob job;
    job.model_dir = kSourceModel;
    job.calibration_text = kText;
    job.output_dir = SpqrDir();
    job.nsamples = 4;
    job.seqlen = 32;
    job.seed = 5;
    job.threads = 1;
    job.layer.tau = 0.2;  // outliers, so dropping them is a test
    auto report = QuantizeModel(job, [](const std::string&) {});
    ASSERT_TRUE(report.ok()) << report.status();
    ASSERT_GT(report->outliers, 0);
    int64_t dropped = 0;
    const absl::Status st = WriteDequantizedModel(SpqrDir(), kSourceModel, NoOutliersDir(),
                                                  /*drop_outliers=*/true, &dropped);
    ASSERT_TRUE(st.ok()) << st;
    ASSERT_EQ(dropped, report->outliers);
  }
  static void TearDownTestSuite() {
    fs::remove_all(*root_);
    delete root_;
  }
  static std::string SpqrDir() { return (*root_ / "spqr").string(); }
  static std::string NoOutliersDir() { return (*root_ / "no_outliers").string(); }
  static fs::path* root_;
};
fs::path* PerplexityForwardTest::root_ = nullptr;

TEST_F(PerplexityForwardTest, EngineExactAgreesWithReferenceOnTheSpqrModel) {
  const PerplexityResult ref = Evaluate(SpqrDir(), Options(PerplexityForward::kReference));
  const PerplexityResult eng = Evaluate(SpqrDir(), Options(PerplexityForward::kEngine));
  ASSERT_EQ(ref.windows, kWindows);
  ASSERT_EQ(eng.windows, kWindows);
  ASSERT_EQ(eng.tokens_scored, ref.tokens_scored);
  EXPECT_EQ(eng.forward, "engine");
  EXPECT_EQ(eng.spqr_kernel, "exact");
  EXPECT_EQ(eng.dense_kernel, "exact");
  EXPECT_EQ(ref.forward, "reference");
  EXPECT_LE(Relative(eng.total_nll, ref.total_nll), kRelTolerance)
      << eng.total_nll << " vs " << ref.total_nll;
  EXPECT_LE(Relative(eng.mean_loss, ref.mean_loss), kRelTolerance);
  // ppl = exp(mean_loss): its relative difference is the absolute difference of the mean losses.
  EXPECT_LE(Relative(eng.ppl, ref.ppl), kRelTolerance * ref.mean_loss);

  // The tolerance can fail: the same model without its outliers is far outside it (both
  // forwards of it are the reference's, so this measures the outliers, not the kernels).
  const PerplexityResult dropped =
      Evaluate(NoOutliersDir(), Options(PerplexityForward::kReference));
  const double outlier_effect = Relative(dropped.total_nll, ref.total_nll);
  EXPECT_GT(outlier_effect, 100 * kRelTolerance);
  std::cout.precision(12);
  std::cout << "total NLL: reference " << ref.total_nll << ", engine " << eng.total_nll
            << " (relative " << Relative(eng.total_nll, ref.total_nll) << "); without outliers "
            << dropped.total_nll << " (relative " << outlier_effect << ")\n";
}

TEST_F(PerplexityForwardTest, EngineExactAgreesWithReferenceOnTheDenseModel) {
  const PerplexityResult ref = Evaluate(kSourceModel, Options(PerplexityForward::kReference));
  const PerplexityResult eng = Evaluate(kSourceModel, Options(PerplexityForward::kEngine));
  ASSERT_EQ(eng.tokens_scored, ref.tokens_scored);
  EXPECT_LE(Relative(eng.total_nll, ref.total_nll), kRelTolerance)
      << eng.total_nll << " vs " << ref.total_nll;
  EXPECT_GT(ref.mean_loss, 1.0);  // a random 512-token model: near log(512) per token
}

// The engine forward cuts a window's prefix into chunks of engine_prefill_chunk tokens; the
// backend's logits do not depend on chunking or threads, so the result is the same bits.
// An odd chunk (7 tokens: 9 chunks of a 63-token prefix, partial last one) and one chunk.
TEST_F(PerplexityForwardTest, EngineResultDoesNotDependOnThreadsOrChunks) {
  PerplexityOptions whole = Options(PerplexityForward::kEngine, 1);
  PerplexityOptions chunked = Options(PerplexityForward::kEngine, 2);
  chunked.engine_prefill_chunk = 7;
  const PerplexityResult a = Evaluate(SpqrDir(), whole);
  const PerplexityResult b = Evaluate(SpqrDir(), chunked);
  EXPECT_EQ(a.threads, 1);
  EXPECT_EQ(b.threads, 2);
  EXPECT_EQ(a.total_nll, b.total_nll);
  EXPECT_EQ(a.ppl, b.ppl);
}

TEST_F(PerplexityForwardTest, Int8KernelRunsWhenAskedFor) {
  PerplexityOptions int8 = Options(PerplexityForward::kEngine);
  int8.spqr_kernel = "int8";
  const PerplexityResult exact = Evaluate(SpqrDir(), Options(PerplexityForward::kEngine));
  const PerplexityResult fast = Evaluate(SpqrDir(), int8);
  EXPECT_EQ(fast.spqr_kernel, "int8");
  // "SpQR layers: N of 14 on the int8 tile kernel": all of them, none with exact.
  EXPECT_TRUE(absl::StrContains(fast.backend, "SpQR layers: 14 of 14 on the int8")) << fast.backend;
  EXPECT_TRUE(absl::StrContains(exact.backend, "SpQR layers: 0 of 14")) << exact.backend;
  // Rounding the activations to int8 changes the numbers, a little (random weights are its
  // worst case: see spqr_serving_test's logit bound).
  EXPECT_NE(fast.total_nll, exact.total_nll);
  EXPECT_LE(Relative(fast.total_nll, exact.total_nll), 1e-2);
  // auto resolves to a kernel that exists on this CPU.
  PerplexityOptions automatic = Options(PerplexityForward::kEngine);
  automatic.spqr_kernel = "auto";
  automatic.dense_kernel = "auto";
  const PerplexityResult a = Evaluate(SpqrDir(), automatic);
  EXPECT_TRUE(a.spqr_kernel == "exact" || a.spqr_kernel == "int8") << a.spqr_kernel;
  EXPECT_TRUE(a.dense_kernel == "exact" || a.dense_kernel == "bf16") << a.dense_kernel;
}

TEST_F(PerplexityForwardTest, BadOptionsAreRefusedNamingTheValue) {
  struct Case {
    PerplexityOptions options;
    std::string expected;
  };
  std::vector<Case> cases;
  cases.push_back({Options(PerplexityForward::kEngine), "\"int4\": expected auto, exact or int8"});
  cases.back().options.spqr_kernel = "int4";
  cases.push_back({Options(PerplexityForward::kEngine), "\"fp8\": expected auto, exact or bf16"});
  cases.back().options.dense_kernel = "fp8";
  cases.push_back({Options(PerplexityForward::kEngine), "chunk must be >= 1 token, got 0"});
  cases.back().options.engine_prefill_chunk = 0;
  cases.push_back({Options(PerplexityForward::kEngine), "seqlen must be >= 2, got 1"});
  cases.back().options.seqlen = 1;
  cases.push_back({Options(PerplexityForward::kReference), "fewer than one window of 1000000"});
  cases.back().options.seqlen = 1000000;
  for (const Case& c : cases) {
    auto r = EvaluatePerplexity(SpqrDir(), kText, c.options);
    ASSERT_FALSE(r.ok()) << c.expected;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << r.status();
    EXPECT_TRUE(absl::StrContains(r.status().message(), c.expected)) << r.status();
  }
  EXPECT_FALSE(ParsePerplexityForward("fast").ok());
  EXPECT_EQ(*ParsePerplexityForward("engine"), PerplexityForward::kEngine);
  EXPECT_EQ(*ParsePerplexityForward("reference"), PerplexityForward::kReference);
}

}  // namespace
}  // namespace spqr
