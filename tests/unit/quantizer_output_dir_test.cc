// spqr-quantize never destroys its input: where it may write (quantizer/output_dir.h), what
// --force may replace, the marker it leaves, and the numeric option ranges (ValidateJobOptions).
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <limits>
#include <string>

#include "absl/strings/match.h"
#include "gtest/gtest.h"
#include "quantizer/model_quantizer.h"
#include "quantizer/output_dir.h"

namespace spqr {
namespace {
namespace fs = std::filesystem;

const std::string kTestModel = std::string(SPQR_SOURCE_DIR) + "/tests/data/test-model";
const std::string kText = std::string(SPQR_SOURCE_DIR) + "/tools/test_model_text.txt";

void Touch(const fs::path& p, const std::string& text = "x") { std::ofstream(p) << text; }

class OutputDirTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() /
            ("spqr_outdir_" + std::to_string(getpid()) + "_" +
             ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(root_);
    // A private copy of the test model, so that a failure of these tests can never damage the
    // committed one.
    model_ = root_ / "parent" / "model";
    fs::create_directories(model_);
    fs::copy(kTestModel, model_, fs::copy_options::recursive);
  }
  void TearDown() override { fs::remove_all(root_); }

  // Refused with `code`, the message containing `part`, and the model still complete.
  void ExpectRefused(const std::string& out, bool force, absl::StatusCode code,
                     const std::string& part, const std::string& calibration = kText) {
    const absl::Status st = CheckOutputDirectory(model_.string(), out, calibration, force);
    EXPECT_EQ(st.code(), code) << out << ": " << st;
    EXPECT_TRUE(absl::StrContains(st.message(), part)) << st;
    EXPECT_TRUE(fs::exists(model_ / "model.safetensors"));
  }
  ModelQuantizeJob Job(const std::string& out, bool force) {
    ModelQuantizeJob job;
    job.model_dir = model_.string();
    job.calibration_text = kText;
    job.output_dir = out;
    job.force = force;
    job.nsamples = 2;
    job.seqlen = 16;
    job.threads = 1;
    return job;
  }

  fs::path root_, model_;
};

TEST_F(OutputDirTest, OutputEqualToInsideOrAroundTheModelIsRefusedEvenWithForce) {
  for (bool force : {false, true}) {
    ExpectRefused(model_.string(), force, absl::StatusCode::kInvalidArgument, "is the input model");
    ExpectRefused(model_.string() + "/", force, absl::StatusCode::kInvalidArgument,
                  "is the input model");
    ExpectRefused((model_ / "." / "").string(), force, absl::StatusCode::kInvalidArgument,
                  "is the input model");
    ExpectRefused((model_ / "sub").string(), force, absl::StatusCode::kInvalidArgument,
                  "inside the input model");
    ExpectRefused((root_ / "parent").string(), force, absl::StatusCode::kInvalidArgument,
                  "contains the input model");
    ExpectRefused(root_.string(), force, absl::StatusCode::kInvalidArgument,
                  "contains the input model");
    ExpectRefused((model_ / "..").string(), force, absl::StatusCode::kInvalidArgument,
                  "contains the input model");
    ExpectRefused("/", force, absl::StatusCode::kInvalidArgument, "contains the input model");
  }
}

TEST_F(OutputDirTest, SymlinksAreResolvedBeforeComparing) {
  fs::create_directory_symlink(model_, root_ / "link_to_model");
  fs::create_directory_symlink(root_ / "parent", root_ / "link_to_parent");
  ExpectRefused((root_ / "link_to_model").string(), true, absl::StatusCode::kInvalidArgument,
                "is the input model");
  ExpectRefused((root_ / "link_to_parent").string(), true, absl::StatusCode::kInvalidArgument,
                "contains the input model");
  ExpectRefused((root_ / "link_to_parent" / "model" / "x").string(), true,
                absl::StatusCode::kInvalidArgument, "inside the input model");
  // The model given through a link, the output as the real parent.
  const absl::Status st = CheckOutputDirectory((root_ / "link_to_model").string(),
                                               (root_ / "parent").string(), kText, true);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
}

TEST_F(OutputDirTest, ExistingThingsSpqrQuantizeDidNotWriteAreNeverReplaced) {
  const fs::path dir = root_ / "user_dir";
  fs::create_directories(dir);
  Touch(dir / "precious.txt");
  ExpectRefused(dir.string(), false, absl::StatusCode::kAlreadyExists, "did not write");
  ExpectRefused(dir.string(), true, absl::StatusCode::kFailedPrecondition, "did not write");
  Touch(root_ / "a_file");
  ExpectRefused((root_ / "a_file").string(), true, absl::StatusCode::kFailedPrecondition,
                "is a file");
  fs::create_directory_symlink(dir, root_ / "link_to_dir");
  ExpectRefused((root_ / "link_to_dir").string(), true, absl::StatusCode::kFailedPrecondition,
                "symbolic link");
  // A marker that is not ours (wrong writer) or not a regular file does not count.
  Touch(dir / kOutputMarker, R"({"written_by": "someone else"})");
  ExpectRefused(dir.string(), true, absl::StatusCode::kFailedPrecondition, "did not write");
  fs::remove(dir / kOutputMarker);
  Touch(root_ / "real_marker", OutputMarkerJson("v", model_.string()));
  fs::create_symlink(root_ / "real_marker", dir / kOutputMarker);
  ExpectRefused(dir.string(), true, absl::StatusCode::kFailedPrecondition, "did not write");
  // None of the refusals suggests --force for something that is not a quantizer output.
  const absl::Status st = CheckOutputDirectory(model_.string(), dir.string(), kText, false);
  EXPECT_FALSE(absl::StrContains(st.message(), "pass --force")) << st;
  EXPECT_TRUE(fs::exists(dir / "precious.txt"));
}

TEST_F(OutputDirTest, EmptyDirectoryAndMarkedOutputAreAccepted) {
  fs::create_directories(root_ / "empty");
  EXPECT_TRUE(CheckOutputDirectory(model_.string(), (root_ / "empty").string(), kText, false).ok());
  const fs::path marked = root_ / "marked";
  fs::create_directories(marked);
  Touch(marked / kOutputMarker, OutputMarkerJson("v", model_.string()));
  EXPECT_TRUE(IsQuantizerOutput(marked.string()));
  const absl::Status without = CheckOutputDirectory(model_.string(), marked.string(), kText, false);
  EXPECT_EQ(without.code(), absl::StatusCode::kAlreadyExists) << without;
  EXPECT_TRUE(CheckOutputDirectory(model_.string(), marked.string(), kText, true).ok());
  // ... unless it holds the calibration text, which replacing it would delete.
  Touch(marked / "calib.txt");
  ExpectRefused(marked.string(), true, absl::StatusCode::kInvalidArgument, "calibration",
                (marked / "calib.txt").string());
}

TEST_F(OutputDirTest, TemporaryDirectoriesAreFreshAndPublishRechecks) {
  const std::string out = (root_ / "out").string();
  auto a = CreateTemporaryOutput(out), b = CreateTemporaryOutput(out);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_NE(*a, *b);
  EXPECT_TRUE(absl::StartsWith(*a, out + ".tmp-")) << *a;
  // The destination was filled by someone else during the run: nothing is removed.
  fs::create_directories(out);
  Touch(fs::path(out) / "theirs");
  const absl::Status st = PublishOutput(*a, out, /*force=*/true);
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition) << st;
  EXPECT_TRUE(fs::exists(fs::path(out) / "theirs"));
  EXPECT_TRUE(fs::exists(*a));
  // An empty destination is replaced.
  fs::remove(fs::path(out) / "theirs");
  EXPECT_TRUE(PublishOutput(*a, out, false).ok());
  EXPECT_FALSE(fs::exists(*a));
}

TEST_F(OutputDirTest, QuantizeModelMarksItsOutputAndForceReplacesOnlyThat) {
  const std::string out = (root_ / "out").string();
  ASSERT_TRUE(QuantizeModel(Job(out, false), nullptr).ok());
  EXPECT_TRUE(IsQuantizerOutput(out));
  auto again = QuantizeModel(Job(out, false), nullptr);
  EXPECT_EQ(again.status().code(), absl::StatusCode::kAlreadyExists) << again.status();
  EXPECT_TRUE(QuantizeModel(Job(out, true), nullptr).ok());
  // The reported scenario: --force with the model's parent (or the model) as --out.
  for (const fs::path& bad : {root_ / "parent", model_}) {
    auto r = QuantizeModel(Job(bad.string(), true), nullptr);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << r.status();
  }
  EXPECT_TRUE(fs::exists(model_ / "model.safetensors"));
  EXPECT_TRUE(fs::exists(model_ / "config.json"));
  // No temporary directories are left behind by the refused or finished runs.
  for (const auto& e : fs::directory_iterator(root_)) {
    EXPECT_FALSE(absl::StrContains(e.path().filename().string(), ".tmp-")) << e.path();
  }
}

TEST_F(OutputDirTest, AnAlreadyRaisedStopLeavesNothingBehind) {
  std::atomic<int> stop{15};
  ModelQuantizeJob job = Job((root_ / "out").string(), false);
  job.stop = &stop;
  auto r = QuantizeModel(job, nullptr);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kCancelled) << r.status();
  EXPECT_TRUE(absl::StrContains(r.status().message(), "signal 15")) << r.status();
  for (const auto& e : fs::directory_iterator(root_)) {
    EXPECT_EQ(e.path().filename(), "parent") << e.path();
  }
}

TEST(ValidateJobOptionsTest, EveryNumberIsRangeChecked) {
  struct Case {
    const char* name;
    void (*set)(ModelQuantizeJob&);
    const char* range;
  };
  const Case cases[] = {
      {"nsamples", [](ModelQuantizeJob& j) { j.nsamples = 0; }, "1..1048576"},
      {"nsamples", [](ModelQuantizeJob& j) { j.nsamples = -3; }, "1..1048576"},
      {"seqlen", [](ModelQuantizeJob& j) { j.seqlen = 1; }, "2..1048576"},
      {"seqlen", [](ModelQuantizeJob& j) { j.seqlen = (1 << 20) + 1; }, "2..1048576"},
      {"threads", [](ModelQuantizeJob& j) { j.threads = -1; }, "0..1024"},
      {"threads", [](ModelQuantizeJob& j) { j.threads = 5000; }, "0..1024"},
      {"wbits", [](ModelQuantizeJob& j) { j.layer.wbits = 0; }, "2..8"},
      {"wbits", [](ModelQuantizeJob& j) { j.layer.wbits = 9; }, "2..8"},
      {"beta1", [](ModelQuantizeJob& j) { j.layer.beta1 = -1; }, "0..1048576"},
      {"beta2", [](ModelQuantizeJob& j) { j.layer.beta2 = 0; }, "1..1048576"},
      {"beta2", [](ModelQuantizeJob& j) { j.layer.beta2 = -16; }, "1..1048576"},
      {"stats_bits", [](ModelQuantizeJob& j) { j.layer.stats_bits = 2; }, "3..8 or 16"},
      {"stats_bits", [](ModelQuantizeJob& j) { j.layer.stats_bits = 12; }, "3..8 or 16"},
      {"tau", [](ModelQuantizeJob& j) { j.layer.tau = -0.5; }, ">= 0"},
      {"tau", [](ModelQuantizeJob& j) { j.layer.tau = std::nan(""); }, ">= 0"},
      {"lambda", [](ModelQuantizeJob& j) { j.layer.lambda = -1; }, ">= 0"},
      {"lambda",
       [](ModelQuantizeJob& j) { j.layer.lambda = std::numeric_limits<double>::infinity(); },
       ">= 0"},
  };
  for (const Case& c : cases) {
    ModelQuantizeJob job;
    EXPECT_TRUE(ValidateJobOptions(job).ok());
    c.set(job);
    const absl::Status st = ValidateJobOptions(job);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << c.name;
    EXPECT_TRUE(absl::StrContains(st.message(), c.name)) << st;
    EXPECT_TRUE(absl::StrContains(st.message(), c.range)) << st;
  }
  ModelQuantizeJob zero;
  zero.threads = 0;      // all cores
  zero.layer.beta1 = 0;  // one group per row
  EXPECT_TRUE(ValidateJobOptions(zero).ok());
}

}  // namespace
}  // namespace spqr
