// spqr-eval: perplexity of a model directory (dense or SpQR) on a text file.
//   spqr-eval --model DIR --text FILE [--seqlen 2048] [--max_windows 0] [--threads 0]
//             [--forward engine|reference] [--spqr_kernel exact|int8|auto]
//             [--dense_kernel exact|bf16|auto]
// Prints one JSON object: model, text, seq_len, windows, tokens_scored, total_nll, mean_loss, ppl,
// seconds (the fields of tools/train/eval_perplexity.py plus total_nll), threads, and which
// forward and kernels ran (forward, spqr_kernel, dense_kernel, backend). The numbers are identical
// for every --threads. Flags may be spelled with '-' for '_' (--spqr-kernel).
//
// Default forward: the engine's CPU backend with its exact kernels. It keeps SpQR layers packed
// (a 7B model needs its packed bytes, not 4 bytes per parameter), it is the code the server runs,
// and with exact kernels its perplexity is the model's, the same on every CPU (auto would pick
// int8 on AVX-512 VNNI machines only). --forward reference is the quantizer's independent fp32
// forward over the decoded weights (quantizer/perplexity.h), to cross-check the engine.
#include <initializer_list>
#include <iostream>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "quantizer/cli/flag_usage.h"
#include "quantizer/perplexity.h"

ABSL_FLAG(std::string, model, "", "model directory (dense checkpoint or SpQR model)");
ABSL_FLAG(std::string, text, "", "evaluation text file");
ABSL_FLAG(int, seqlen, 2048, "window length in tokens (2..1048576)");
ABSL_FLAG(int64_t, max_windows, 0, "evaluate only the first N windows (0 = all)");
ABSL_FLAG(int, threads, 0,
          "threads (0 = all cores; else 1..1024): the engine forward runs each window's ops on "
          "them, the reference forward spreads windows over them");
ABSL_FLAG(std::string, forward, "engine",
          "engine (the CPU backend, SpQR layers kept packed) or reference (the quantizer's fp32 "
          "forward over weights decoded up front: ~4 bytes per parameter)");
ABSL_FLAG(std::string, spqr_kernel, "exact",
          "engine forward: SpQR kernel, exact, int8 or auto (the server's model.spqr_cpu_kernel)");
ABSL_FLAG(std::string, dense_kernel, "exact",
          "engine forward: dense kernel, exact, bf16 or auto (the server's "
          "model.dense_cpu_kernel)");

namespace {
constexpr char kSynopsis[] =
    "spqr-eval: perplexity of a dense or SpQR model directory on a text file.\n"
    "usage: spqr-eval --model DIR --text FILE [--seqlen 2048] [--max_windows 0] [--threads 0]\n"
    "                 [--forward engine|reference] [--spqr_kernel exact|int8|auto]\n"
    "                 [--dense_kernel exact|bf16|auto]\n"
    "Flags may be spelled with '-' for '_' (--spqr-kernel).";

// Whether argv sets flag `name` (--name, --name=..., -name...; after AcceptDashedFlagNames). This
// Abseil keeps CommandLineFlag::IsSpecifiedOnCommandLine private.
bool OnCommandLine(int argc, char** argv, absl::string_view name) {
  for (int i = 1; i < argc; ++i) {
    absl::string_view a = argv[i];
    if (a == "--") return false;
    if (!absl::ConsumePrefix(&a, "--")) absl::ConsumePrefix(&a, "-");
    if (a == name || absl::StartsWith(a, absl::StrCat(name, "="))) return true;
  }
  return false;
}

// Exit code 2 with a message naming the flag, the value and the choices, or 0.
int CheckChoice(const char* flag, const std::string& value,
                std::initializer_list<const char*> choices) {
  std::string list;
  for (const char* c : choices) {
    if (value == c) return 0;
    list += list.empty() ? c : std::string(", ") + c;
  }
  std::cerr << "error: --" << flag << " \"" << value << "\" is not one of " << list << "\n";
  return 2;
}
}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("Perplexity of a dense or SpQR model directory on a text file.");
  if (spqr::WantsHelp(argc, argv)) {
    std::cout << spqr::FlagUsage(kSynopsis, "spqr_eval_main");
    return 0;
  }
  spqr::AcceptDashedFlagNames(argc, argv);
  absl::ParseCommandLine(argc, argv);
  const std::string model = absl::GetFlag(FLAGS_model), text = absl::GetFlag(FLAGS_text);
  if (model.empty() || text.empty()) {
    std::cerr << "error: --model and --text are required (see --help)\n";
    return 2;
  }
  spqr::PerplexityOptions options;
  options.seqlen = absl::GetFlag(FLAGS_seqlen);
  options.max_windows = absl::GetFlag(FLAGS_max_windows);
  options.threads = absl::GetFlag(FLAGS_threads);
  if (options.seqlen < 2 || options.seqlen > (1 << 20)) {
    std::cerr << "error: --seqlen must be in 2..1048576, got " << options.seqlen << "\n";
    return 2;
  }
  if (options.max_windows < 0) {
    std::cerr << "error: --max_windows must be >= 0 (0 = all windows), got " << options.max_windows
              << "\n";
    return 2;
  }
  if (options.threads < 0 || options.threads > 1024) {
    std::cerr << "error: --threads must be in 0..1024 (0 = all cores), got " << options.threads
              << "\n";
    return 2;
  }
  const std::string forward = absl::GetFlag(FLAGS_forward);
  options.spqr_kernel = absl::GetFlag(FLAGS_spqr_kernel);
  options.dense_kernel = absl::GetFlag(FLAGS_dense_kernel);
  if (int rc = CheckChoice("forward", forward, {"engine", "reference"}) +
               CheckChoice("spqr_kernel", options.spqr_kernel, {"exact", "int8", "auto"}) +
               CheckChoice("dense_kernel", options.dense_kernel, {"exact", "bf16", "auto"});
      rc != 0) {
    return 2;
  }
  options.forward = *spqr::ParsePerplexityForward(forward);
  if (options.forward == spqr::PerplexityForward::kReference) {
    for (const char* flag : {"spqr_kernel", "dense_kernel"}) {
      if (OnCommandLine(argc, argv, flag)) {
        std::cerr << "error: --" << flag
                  << " picks an engine kernel; the reference forward has none (use --forward "
                     "engine, or drop --"
                  << flag << ")\n";
        return 2;
      }
    }
  }
  auto r = spqr::EvaluatePerplexity(model, text, options);
  if (!r.ok()) {
    std::cerr << "error: " << r.status().message() << "\n";
    return 1;
  }
  std::cout << r->ToJson(model, text) << std::endl;
  return 0;
}
