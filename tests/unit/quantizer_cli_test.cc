// The command-line tools as a user runs them: every binary's --help prints usage on stdout and
// exits 0; spqr-eval refuses bad flags naming the choices and runs the engine forward by default;
// SIGTERM/SIGINT during a real spqr-quantize run removes its temporary directory and
// exits non-zero saying so; spqr-server refuses a KV budget larger than the machine's memory
// before loading anything.
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "absl/strings/match.h"
#include "gtest/gtest.h"

extern char** environ;

namespace {
namespace fs = std::filesystem;

const std::string kBin = SPQR_BINARY_DIR;
const std::string kTestModel = std::string(SPQR_SOURCE_DIR) + "/tests/data/test-model";
const std::string kText = std::string(SPQR_SOURCE_DIR) + "/tools/test_model_text.txt";

std::string Slurp(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

class CliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() /
            ("spqr_cli_" + std::to_string(getpid()) + "_" +
             ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(root_);
    fs::create_directories(root_);
  }
  void TearDown() override { fs::remove_all(root_); }

  // Starts `args` with stdout and stderr redirected to files under root_.
  pid_t Spawn(const std::vector<std::string>& args) {
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, Out().c_str(),
                                     O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_addopen(&actions, STDERR_FILENO, Err().c_str(),
                                     O_WRONLY | O_CREAT | O_TRUNC, 0644);
    std::vector<char*> argv;
    for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    pid_t pid = -1;
    const int rc = posix_spawn(&pid, argv[0], &actions, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    EXPECT_EQ(rc, 0) << args[0];
    return rc == 0 ? pid : -1;
  }
  // Exit code, or 1000 + signal when killed by one.
  static int Wait(pid_t pid) {
    int status = 0;
    if (waitpid(pid, &status, 0) != pid) return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 1000 + WTERMSIG(status);
  }
  int Run(const std::vector<std::string>& args) {
    const pid_t pid = Spawn(args);
    return pid > 0 ? Wait(pid) : -1;
  }
  std::string Out() const { return (root_ / "stdout.txt").string(); }
  std::string Err() const { return (root_ / "stderr.txt").string(); }

  // Runs spqr-quantize until its first layer is done, stops it, checks its temporary directory
  // exists, sends `sig` and lets it continue: it must exit 128 + sig with no directory left.
  // 64 x 256 calibration tokens (nearly all of the text) keep the rest of the run, 13 more layers
  // and their forward passes, long against the few ms between the progress line and SIGSTOP.
  void InterruptQuantizerWith(int sig) {
    const std::string out = (root_ / "out").string();
    const pid_t pid =
        Spawn({kBin + "/quantizer/spqr-quantize", "--model", kTestModel, "--out", out,
               "--calibration", kText, "--nsamples", "64", "--seqlen", "256", "--threads", "1"});
    ASSERT_GT(pid, 0);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
    while (!absl::StrContains(Slurp(Err()), "\"event\":\"layer\"") &&
           std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    ASSERT_EQ(kill(pid, SIGSTOP), 0);
    ASSERT_TRUE(absl::StrContains(Slurp(Err()), "\"event\":\"layer\"")) << Slurp(Err());
    std::vector<fs::path> tmp;
    for (const auto& e : fs::directory_iterator(root_)) {
      if (absl::StrContains(e.path().filename().string(), "out.tmp-")) tmp.push_back(e.path());
    }
    ASSERT_EQ(tmp.size(), 1u) << "the run's temporary directory";
    ASSERT_EQ(kill(pid, sig), 0);
    ASSERT_EQ(kill(pid, SIGCONT), 0);
    EXPECT_EQ(Wait(pid), 128 + sig);
    const std::string err = Slurp(Err());
    EXPECT_TRUE(absl::StrContains(err, "signal received")) << err;
    EXPECT_TRUE(absl::StrContains(err, "interrupted by signal " + std::to_string(sig))) << err;
    EXPECT_TRUE(absl::StrContains(err, tmp[0].filename().string())) << err;
    EXPECT_FALSE(fs::exists(tmp[0]));
    EXPECT_FALSE(fs::exists(out));
  }

  fs::path root_;
};

TEST_F(CliTest, HelpPrintsUsageOnStdoutAndExitsZero) {
  const std::vector<std::pair<std::string, std::string>> tools = {
      {"/quantizer/spqr-quantize", "--calibration"}, {"/quantizer/spqr-eval", "--text"},
      {"/server/spqr-server", "--config"},           {"/server/spqr-client", "generate"},
      {"/bench/spqr-bench-cpu", "--threads"},        {"/bench/spqr-bench-finite-check", "--model"},
  };
  for (const auto& [tool, expected] : tools) {
    for (const char* flag : {"--help", "-h"}) {
      EXPECT_EQ(Run({kBin + tool, flag}), 0) << tool << " " << flag << ": " << Slurp(Err());
      EXPECT_TRUE(absl::StrContains(Slurp(Out()), expected)) << tool << ": " << Slurp(Out());
    }
  }
}

TEST_F(CliTest, QuantizerRefusesBadNumbersNamingTheRange) {
  for (const auto& [flag, value, range] :
       std::vector<std::tuple<std::string, std::string, std::string>>{
           {"--threads", "-2", "0..1024"},
           {"--wbits", "1", "2..8"},
           {"--beta2", "0", "1..1048576"},
           {"--nsamples", "0", "1..1048576"},
           {"--seqlen", "1", "2..1048576"},
           {"--stats_bits", "20", "3..8 or 16"},
           {"--lambda", "nan", ">= 0"},
       }) {
    EXPECT_EQ(Run({kBin + "/quantizer/spqr-quantize", "--model", kTestModel, "--out",
                   (root_ / "o").string(), "--calibration", kText, flag, value}),
              2)
        << flag;
    EXPECT_TRUE(absl::StrContains(Slurp(Err()), range)) << flag << ": " << Slurp(Err());
  }
  EXPECT_FALSE(fs::exists(root_ / "o"));
}

TEST_F(CliTest, EvalRefusesBadFlagsNamingFlagAndChoices) {
  const std::string eval = kBin + "/quantizer/spqr-eval";
  for (const auto& [args, expected] :
       std::vector<std::pair<std::vector<std::string>, std::vector<std::string>>>{
           {{"--forward", "fast"}, {"--forward \"fast\"", "engine, reference"}},
           {{"--spqr-kernel", "int4"}, {"--spqr_kernel \"int4\"", "exact, int8, auto"}},
           {{"--dense_kernel=fp8"}, {"--dense_kernel \"fp8\"", "exact, bf16, auto"}},
           {{"--forward", "reference", "--spqr_kernel", "int8"},
            {"--spqr_kernel picks an engine kernel", "--forward engine"}},
           {{"--forward=reference", "--dense-kernel=exact"}, {"--dense_kernel picks an engine"}},
           {{"--seqlen", "1"}, {"--seqlen must be in 2..1048576"}},
       }) {
    std::vector<std::string> argv = {eval, "--model", kTestModel, "--text", kText};
    argv.insert(argv.end(), args.begin(), args.end());
    EXPECT_EQ(Run(argv), 2) << args[0];
    for (const std::string& e : expected) {
      EXPECT_TRUE(absl::StrContains(Slurp(Err()), e)) << args[0] << ": " << Slurp(Err());
    }
    EXPECT_EQ(Slurp(Out()), "") << args[0];
  }
}

// The engine forward is the default, with exact kernels; dashed and underscored flag names work.
TEST_F(CliTest, EvalRunsTheEngineForwardByDefault) {
  const std::string eval = kBin + "/quantizer/spqr-eval";
  ASSERT_EQ(Run({eval, "--model", kTestModel, "--text", kText, "--seqlen", "32", "--max-windows",
                 "2", "--threads", "1"}),
            0)
      << Slurp(Err());
  const std::string out = Slurp(Out());
  for (const char* field :
       {"\"forward\":\"engine\"", "\"spqr_kernel\":\"exact\"", "\"dense_kernel\":\"exact\"",
        "\"windows\":2", "\"tokens_scored\":62", "\"backend\":\"cpu: 1 threads"}) {
    EXPECT_TRUE(absl::StrContains(out, field)) << field << " in " << out;
  }
  ASSERT_EQ(Run({eval, "--model", kTestModel, "--text", kText, "--seqlen", "32", "--max_windows",
                 "2", "--threads", "1", "--forward", "reference"}),
            0)
      << Slurp(Err());
  EXPECT_TRUE(absl::StrContains(Slurp(Out()), "\"forward\":\"reference\",\"spqr_kernel\":null"))
      << Slurp(Out());
}

TEST_F(CliTest, SigtermDuringARunRemovesTheTemporaryDirectory) { InterruptQuantizerWith(SIGTERM); }

TEST_F(CliTest, SigintDuringARunRemovesTheTemporaryDirectory) { InterruptQuantizerWith(SIGINT); }

TEST_F(CliTest, ServerRefusesAKvCacheLargerThanTheMachine) {
  const auto start = std::chrono::steady_clock::now();
  EXPECT_EQ(Run({kBin + "/server/spqr-server", "--model", kTestModel, "--listen", "127.0.0.1:0",
                 "--metrics_port", "0", "--engine.kv_cache_bytes", "4611686018427387904"}),
            1);
  const std::string err = Slurp(Err());
  EXPECT_TRUE(absl::StrContains(err, "engine.kv_cache_bytes=4611686018427387904 exceeds")) << err;
  EXPECT_TRUE(absl::StrContains(err, "memory")) << err;
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(30));
}

}  // namespace
