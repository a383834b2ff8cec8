// CPU forward throughput on a Hugging Face checkpoint directory: prefill tokens/s for a few prompt
// lengths and decode tokens/s at batch 1, printed as one JSON object (with the machine, the git
// commit and the model's shape) so results can be committed under bench/results/.
//
//   spqr-bench-cpu [--model DIR] [--threads N] [--prompts 128,512] [--decode-steps 128]
//                  [--repeats 3] [--spqr-kernel auto|exact|int8]
//                  [--dense-kernel auto|exact|bf16]
#include <omp.h>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "engine/backend/cpu/cpu_backend.h"
#include "engine/model/llama_weights.h"
#include "engine/model/model_config.h"
#include "engine/model/safetensors.h"
#include "nlohmann/json.hpp"

namespace spqr {
namespace {

struct Args {
  std::string model = std::string(SPQR_SOURCE_DIR) + "/tests/data/test-model";
  int threads = 0;
  std::vector<int> prompts = {128, 512};
  int decode_steps = 128;
  int decode_context = 128;  // prompt prefilled before the decode steps
  int repeats = 3;
  std::string spqr_kernel = "auto";
  std::string dense_kernel = "auto";
};

bool ParseArgs(int argc, char** argv, Args* a) {
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
    bool ok = true;
    if (flag == "--model") {
      a->model = value;
    } else if (flag == "--threads") {
      ok = absl::SimpleAtoi(value, &a->threads);
    } else if (flag == "--decode-steps") {
      ok = absl::SimpleAtoi(value, &a->decode_steps);
    } else if (flag == "--decode-context") {
      ok = absl::SimpleAtoi(value, &a->decode_context);
    } else if (flag == "--spqr-kernel") {
      a->spqr_kernel = value;
    } else if (flag == "--dense-kernel") {
      a->dense_kernel = value;
    } else if (flag == "--repeats") {
      ok = absl::SimpleAtoi(value, &a->repeats);
    } else if (flag == "--prompts") {
      a->prompts.clear();
      for (absl::string_view p : absl::StrSplit(value, ',')) {
        int n = 0;
        ok = ok && absl::SimpleAtoi(p, &n) && n > 0;
        a->prompts.push_back(n);
      }
    } else {
      ok = false;
    }
    if (!ok) return false;
  }
  return (argc % 2 == 1) && a->repeats > 0 && a->decode_steps > 0 && a->decode_context > 0;
}

std::string CommandOutput(const std::string& cmd) {
  std::string out;
  if (FILE* p = popen(cmd.c_str(), "r")) {
    char buf[256];
    while (fgets(buf, sizeof(buf), p)) out += buf;
    pclose(p);
  }
  while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
  return out;
}

std::string FirstLine(const std::string& path) {
  std::ifstream f(path);
  std::string line;
  std::getline(f, line);
  return line;
}

std::string CpuModel() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  }
  return "unknown";
}

// CPU time of the whole process (all threads): with wall time it shows how much of the machine
// the run actually got.
double ProcessCpuSeconds() {
  timespec t{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) + 1e-9 * static_cast<double>(t.tv_nsec);
}

double Seconds(std::chrono::steady_clock::time_point a, std::chrono::steady_clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// Deterministic token ids in [0, vocab).
std::vector<int32_t> Tokens(int n, int64_t vocab) {
  std::vector<int32_t> t(n);
  uint32_t x = 12345;
  for (int i = 0; i < n; ++i) {
    x = x * 1103515245u + 12345u;
    t[i] = static_cast<int32_t>((x >> 8) % vocab);
  }
  return t;
}

int Run(const Args& args) {
  auto fail = [](const absl::Status& s) {
    std::cerr << s << "\n";
    return 1;
  };
  auto config = LoadModelConfig(args.model);
  if (!config.ok()) return fail(config.status());
  auto checkpoint = Checkpoint::Open(args.model);
  if (!checkpoint.ok()) return fail(checkpoint.status());
  auto weights = BindLlamaWeights(std::move(*checkpoint), *config);
  if (!weights.ok()) return fail(weights.status());
  auto kernel = ParseSpqrCpuKernel(args.spqr_kernel);
  auto dense_kernel = ParseDenseCpuKernel(args.dense_kernel);
  if (!kernel.ok() || !dense_kernel.ok()) {
    std::cerr << (kernel.ok() ? dense_kernel.status() : kernel.status()) << "\n";
    return 2;
  }
  auto created =
      CreateCpuBackend(*weights, CpuBackendOptions{args.threads, *kernel, *dense_kernel});
  if (!created.ok()) return fail(created.status());
  Backend& backend = **created;
  const int64_t vocab = config->vocab_size;

  const int block_size = 16;
  int max_len = args.decode_context + args.decode_steps;
  for (int p : args.prompts) max_len = std::max(max_len, p);
  const int blocks = (max_len + block_size - 1) / block_size;
  if (absl::Status s = backend.AllocateKvPool({blocks, block_size}); !s.ok()) return fail(s);
  std::vector<int32_t> table(blocks);
  for (int b = 0; b < blocks; ++b) table[b] = b;

  nlohmann::json prefill = nlohmann::json::array();
  StepOutput out;
  // Warm-up: page the weights in and start the thread pool.
  {
    std::vector<int32_t> t = Tokens(8, vocab);
    StepPlan plan;
    plan.seqs.push_back({t, 0, table, 1});
    if (absl::Status s = backend.Forward(plan, &out); !s.ok()) return fail(s);
  }
  for (int n : args.prompts) {
    std::vector<int32_t> t = Tokens(n, vocab);
    std::vector<double> times;
    const double cpu0 = ProcessCpuSeconds();
    for (int r = 0; r < args.repeats; ++r) {
      StepPlan plan;
      plan.seqs.push_back({t, 0, table, 1});
      const auto t0 = std::chrono::steady_clock::now();
      if (absl::Status s = backend.Forward(plan, &out); !s.ok()) return fail(s);
      times.push_back(Seconds(t0, std::chrono::steady_clock::now()));
    }
    const double cpu_per_run = (ProcessCpuSeconds() - cpu0) / args.repeats;
    const double best = *std::min_element(times.begin(), times.end());
    std::sort(times.begin(), times.end());
    prefill.push_back({{"prompt_tokens", n},
                       {"best_seconds", best},
                       {"median_seconds", times[times.size() / 2]},
                       {"tokens_per_second", n / best},
                       {"cpu_seconds_per_run", cpu_per_run}});
  }

  // Decode at batch 1: prefill a context, then one token per step (greedy argmax feedback).
  nlohmann::json decode_runs = nlohmann::json::array();
  double best_decode = 1e30;
  double decode_cpu = 0;
  for (int r = 0; r < args.repeats; ++r) {
    std::vector<int32_t> ctx = Tokens(args.decode_context, vocab);
    StepPlan plan;
    plan.seqs.push_back({ctx, 0, table, 1});
    if (absl::Status s = backend.Forward(plan, &out); !s.ok()) return fail(s);
    std::vector<int32_t> token(1);
    const auto t0 = std::chrono::steady_clock::now();
    const double cpu0 = ProcessCpuSeconds();
    for (int step = 0; step < args.decode_steps; ++step) {
      token[0] = static_cast<int32_t>(std::max_element(out.logits.begin(), out.logits.end()) -
                                      out.logits.begin());
      StepPlan d;
      d.seqs.push_back({token, args.decode_context + step, table, 1});
      if (absl::Status s = backend.Forward(d, &out); !s.ok()) return fail(s);
    }
    const double secs = Seconds(t0, std::chrono::steady_clock::now());
    decode_cpu += ProcessCpuSeconds() - cpu0;
    best_decode = std::min(best_decode, secs);
    decode_runs.push_back(secs);
  }

  char date[32];
  const std::time_t now = std::time(nullptr);
  std::strftime(date, sizeof(date), "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
  const std::string git = "git -C " + std::string(SPQR_SOURCE_DIR);
  nlohmann::json j = {
      {"benchmark", "cpu_forward"},
      {"date", date},
      {"git_commit", CommandOutput(git + " rev-parse HEAD 2>/dev/null")},
      {"git_dirty",
       !CommandOutput(
            git +
            " status --porcelain --untracked-files=no -- engine/backend/cpu "
            "engine/model engine/util bench/cpu_forward_bench.cc bench/CMakeLists.txt 2>/dev/null")
            .empty()},
      {"machine",
       {{"cpu_model", CpuModel()},
        {"nproc", omp_get_num_procs()},
        {"threads", args.threads > 0 ? args.threads : omp_get_max_threads()},
        {"spqr_kernel", args.spqr_kernel},
        {"dense_kernel", args.dense_kernel}}},
      {"model",
       {{"dir", args.model},
        {"model_type", config->model_type},
        {"torch_dtype", config->torch_dtype},
        {"hidden_size", config->hidden_size},
        {"intermediate_size", config->intermediate_size},
        {"num_hidden_layers", config->num_hidden_layers},
        {"num_attention_heads", config->num_attention_heads},
        {"num_key_value_heads", config->num_key_value_heads},
        {"vocab_size", config->vocab_size},
        {"weight_bytes", backend.memory_stats().weight_bytes}}},
      {"prefill", prefill},
      {"decode",
       {{"batch", 1},
        {"context_tokens", args.decode_context},
        {"steps", args.decode_steps},
        {"run_seconds", decode_runs},
        {"best_seconds", best_decode},
        {"cpu_seconds_per_run", decode_cpu / args.repeats},
        {"tokens_per_second", args.decode_steps / best_decode},
        {"weight_gb_per_second",
         backend.memory_stats().weight_bytes * (args.decode_steps / best_decode) / 1e9}}},
      {"repeats", args.repeats},
  };
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  j["peak_rss_bytes"] = static_cast<int64_t>(usage.ru_maxrss) * 1024;
  // Other work on the machine skews the numbers; record how busy it was.
  j["machine"]["loadavg"] = FirstLine("/proc/loadavg");
  // OpenMP threads spin at barriers unless OMP_WAIT_POLICY=passive: fastest on an idle machine,
  // very slow on an oversubscribed one.
  const char* wait_policy = std::getenv("OMP_WAIT_POLICY");
  j["machine"]["omp_wait_policy"] = wait_policy ? wait_policy : "(unset)";
  std::cout << j.dump(2) << "\n";
  return 0;
}

}  // namespace
}  // namespace spqr

int main(int argc, char** argv) {
  constexpr char kUsage[] =
      "usage: spqr-bench-cpu [--model DIR] [--threads N] [--prompts 128,512] "
      "[--decode-steps 128] [--decode-context 128] [--repeats 3]\n"
      "  --threads: 0 = all cores, else 1..1024; the other numbers must be positive\n";
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--help" || a == "-h" || a == "-help") {
      std::cout << kUsage;
      return 0;
    }
  }
  spqr::Args args;
  if (!spqr::ParseArgs(argc, argv, &args) || args.threads < 0 || args.threads > 1024) {
    std::cerr << kUsage;
    return 2;
  }
  return spqr::Run(args);
}
