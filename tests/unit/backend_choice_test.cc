// The model loader's backend choice in the real build (no harness): `cuda` without a usable GPU
// is a clear FAILED_PRECONDITION (this machine has no driver, or the build has no CUDA backend),
// and `auto` says which backend it chose and why. On a machine with a GPU, `cuda` must load.
#include <memory>
#include <string>

#include "absl/strings/match.h"
#include "engine/runtime/model.h"
#include "gtest/gtest.h"

namespace spqr {
namespace {

absl::StatusOr<std::unique_ptr<LoadedModel>> Load(const std::string& backend) {
  ModelLoadOptions options;
  options.backend = backend;
  options.num_threads = 1;
  return LoadModel(std::string(SPQR_SOURCE_DIR) + "/tests/data/test-model", options);
}

TEST(BackendChoiceTest, CudaLoadsOnAGpuOrFailsWithTheReason) {
  absl::StatusOr<std::unique_ptr<LoadedModel>> model = Load("cuda");
  if (model.ok()) {
    EXPECT_EQ((*model)->backend->name(), "cuda");
    return;
  }
  EXPECT_EQ(model.status().code(), absl::StatusCode::kFailedPrecondition) << model.status();
  EXPECT_TRUE(absl::StartsWith(model.status().message(), "backend \"cuda\": ")) << model.status();
}

TEST(BackendChoiceTest, AutoSaysWhichBackendItChoseAndWhy) {
  absl::StatusOr<std::unique_ptr<LoadedModel>> model = Load("auto");
  ASSERT_TRUE(model.ok()) << model.status();
  const std::string& note = (*model)->backend_note;
  EXPECT_TRUE(absl::StartsWith(note, "backend auto: chose " + (*model)->backend->name() + " ("))
      << note;
  // Without a usable device the reason names what is missing.
  if ((*model)->backend->name() == "cpu") {
    EXPECT_TRUE(absl::StrContains(note, "no usable CUDA device") ||
                absl::StrContains(note, "no CUDA backend") ||
                absl::StrContains(note, "exposes no device") ||
                absl::StrContains(note, "cannot run this build's kernels"))
        << note;
  }
}

TEST(BackendChoiceTest, ExplicitBackendsLeaveNoNote) {
  absl::StatusOr<std::unique_ptr<LoadedModel>> model = Load("cpu");
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ((*model)->backend->name(), "cpu");
  EXPECT_EQ((*model)->backend_note, "");
}

}  // namespace
}  // namespace spqr
