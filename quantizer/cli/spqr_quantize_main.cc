// spqr-quantize: quantizes a Hugging Face LLaMA-family checkpoint into an SpQR model directory.
//   spqr-quantize --model DIR --out DIR --calibration TEXT [--method spqr|gptq|rtn] [--wbits 3]
//                 [--beta1 16] [--beta2 16] [--stats_bits 3] [--tau 0.2|inf] [--lambda 1.0]
//                 [--act_order] [--nsamples 128] [--seqlen 2048] [--seed 0] [--threads 0] [--force]
//                 [--job JOB.yaml]   (keys as the flags, see quantizer/job_file.h)
// Progress: one JSON line per layer and per block on stderr. Result: quantization_report.{json,txt}
// in the output directory, the readable summary also on stdout. --help: usage on stdout, exit 0.
// SIGINT/SIGTERM: the job stops at its next check, removes its temporary directory and exits with
// 128 + the signal number (a second signal kills at once).
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "quantizer/cli/flag_usage.h"
#include "quantizer/job_file.h"
#include "quantizer/model_quantizer.h"

ABSL_FLAG(std::string, model, "", "input checkpoint directory (HF layout)");
ABSL_FLAG(std::string, out, "", "output SpQR model directory");
ABSL_FLAG(bool, force, false,
          "replace an existing output directory, only if an earlier spqr-quantize run wrote it");
ABSL_FLAG(std::string, calibration, "", "calibration text file");
ABSL_FLAG(int, nsamples, 128, "calibration windows (1..1048576)");
ABSL_FLAG(int, seqlen, 2048, "tokens per calibration window (2..1048576)");
ABSL_FLAG(uint64_t, seed, 0, "seed of the calibration window draw");
ABSL_FLAG(std::string, method, "spqr", "spqr, gptq or rtn");
ABSL_FLAG(int, wbits, 3, "weight bits (2..8)");
ABSL_FLAG(int, beta1, 16,
          "columns per statistics group (0 = one group per row; else 1..1048576, dividing every "
          "layer's input width)");
ABSL_FLAG(int, beta2, 16, "rows per second-level statistics block (1..1048576)");
ABSL_FLAG(int, stats_bits, 3, "statistics bits (3..8, or 16 for fp16 statistics)");
ABSL_FLAG(std::string, tau, "inf", "outlier threshold >= 0 (spqr only), 'inf' for none");
ABSL_FLAG(double, lambda, 1.0, "Hessian damping relative to mean(diag H), finite and >= 0");
ABSL_FLAG(bool, act_order, true, "permute inputs by descending Hessian diagonal");
ABSL_FLAG(int, threads, 0, "worker threads (0 = all cores; else 1..1024)");

ABSL_FLAG(std::string, job, "", "YAML job file (keys as the flags; explicit flags override it)");

namespace {

constexpr char kSynopsis[] =
    "spqr-quantize: quantize a LLaMA-family checkpoint with SpQR, GPTQ or RTN.\n"
    "usage: spqr-quantize --model HF_DIR --out OUT_DIR --calibration TEXT_FILE [flags]\n"
    "       spqr-quantize --job JOB.yaml [flags]   (job keys as the flags; flags override)\n"
    "OUT_DIR must not exist, or be empty, or (with --force) hold an earlier spqr-quantize output;\n"
    "it may not be, contain or lie inside the model directory.";

// The signal that asked the job to stop (0: none). Lock-free, so safe to store from a handler.
std::atomic<int> g_stop{0};
static_assert(std::atomic<int>::is_always_lock_free);

void OnStopSignal(int sig) {
  g_stop.store(sig);
  // Only async-signal-safe calls here: write(2) of a fixed text.
  static const char kMsg[] =
      "spqr-quantize: signal received; stopping at the next check and removing the temporary "
      "output (a second signal exits at once)\n";
  ssize_t ignored = write(STDERR_FILENO, kMsg, sizeof(kMsg) - 1);
  (void)ignored;
}

void InstallStopHandlers() {
  struct sigaction sa;
  std::memset(&sa, 0, sizeof(sa));
  sa.sa_handler = OnStopSignal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESETHAND;  // the second signal takes the default action: exit at once
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
}

std::string ReadFileOrEmpty(const std::string& path, bool* ok) {
  std::ifstream in(path, std::ios::binary);
  *ok = static_cast<bool>(in);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Whether --name, --name=..., or --noname (bools) appears on the command line. (This Abseil
// version keeps CommandLineFlag::IsSpecifiedOnCommandLine private.)
std::vector<std::string> g_args;
bool Given(const std::string& name) {
  for (const std::string& a : g_args) {
    for (const std::string& p : {"--" + name, "-" + name, "--no" + name, "-no" + name}) {
      if (a == p || a.rfind(p + "=", 0) == 0) return true;
    }
  }
  return false;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("Quantize a LLaMA-family checkpoint with SpQR, GPTQ or RTN.");
  if (spqr::WantsHelp(argc, argv)) {
    std::cout << spqr::FlagUsage(kSynopsis, "spqr_quantize_main");
    return 0;
  }
  g_args.assign(argv + 1, argv + argc);
  absl::ParseCommandLine(argc, argv);
  spqr::ModelQuantizeJob job;
  const std::string job_file = absl::GetFlag(FLAGS_job);
  if (!job_file.empty()) {
    bool ok = false;
    const std::string text = ReadFileOrEmpty(job_file, &ok);
    if (!ok) {
      std::cerr << "error: cannot read job file '" << job_file << "'\n";
      return 2;
    }
    absl::Status st = spqr::ApplyJobYaml(text, job_file, &job);
    if (!st.ok()) {
      std::cerr << "error: " << st.message() << "\n";
      return 2;
    }
  }
  // Without a job file every flag applies (its default included); with one, only explicit flags.
  auto use = [&](const char* name) { return job_file.empty() || Given(name); };
  if (use("model")) job.model_dir = absl::GetFlag(FLAGS_model);
  if (use("out")) job.output_dir = absl::GetFlag(FLAGS_out);
  if (use("force")) job.force = absl::GetFlag(FLAGS_force);
  if (use("calibration")) job.calibration_text = absl::GetFlag(FLAGS_calibration);
  if (use("nsamples")) job.nsamples = absl::GetFlag(FLAGS_nsamples);
  if (use("seqlen")) job.seqlen = absl::GetFlag(FLAGS_seqlen);
  if (use("seed")) job.seed = absl::GetFlag(FLAGS_seed);
  if (use("threads")) job.threads = absl::GetFlag(FLAGS_threads);
  if (use("method")) {
    absl::Status st = spqr::ParseMethod(absl::GetFlag(FLAGS_method), &job.layer.method);
    if (!st.ok()) {
      std::cerr << "error: --" << st.message() << "\n";
      return 2;
    }
  }
  if (use("wbits")) job.layer.wbits = absl::GetFlag(FLAGS_wbits);
  if (use("beta1")) job.layer.beta1 = absl::GetFlag(FLAGS_beta1);
  if (use("beta2")) job.layer.beta2 = absl::GetFlag(FLAGS_beta2);
  if (use("stats_bits")) job.layer.stats_bits = absl::GetFlag(FLAGS_stats_bits);
  if (use("lambda")) job.layer.lambda = absl::GetFlag(FLAGS_lambda);
  if (use("act_order")) job.layer.act_order = absl::GetFlag(FLAGS_act_order);
  if (use("tau")) {
    absl::Status st = spqr::ParseTau(absl::GetFlag(FLAGS_tau), &job.layer.tau);
    if (!st.ok()) {
      std::cerr << "error: --" << st.message() << "\n";
      return 2;
    }
  }
  if (job.model_dir.empty() || job.output_dir.empty() || job.calibration_text.empty()) {
    std::cerr << "error: model, out and calibration are required (flags or job file; see "
                 "--help)\n";
    return 2;
  }
  if (absl::Status st = spqr::ValidateJobOptions(job); !st.ok()) {
    std::cerr << "error: " << st.message() << "\n";
    return 2;
  }
  InstallStopHandlers();
  job.stop = &g_stop;
  auto report =
      spqr::QuantizeModel(job, [](const std::string& line) { std::cerr << line << std::endl; });
  if (!report.ok()) {
    std::cerr << "error: " << report.status().message() << "\n";
    const int sig = g_stop.load();
    return report.status().code() == absl::StatusCode::kCancelled && sig != 0 ? 128 + sig : 1;
  }
  std::cout << report->ToText();
  return 0;
}
