// spqr-eval: perplexity of a model directory (dense or SpQR) on a text file.
//   spqr-eval --model DIR --text FILE [--seqlen 2048] [--max_windows 0] [--threads 0]
// Prints one JSON object: model, text, seq_len, windows, tokens_scored, total_nll, mean_loss, ppl,
// seconds (the fields of tools/train/eval_perplexity.py plus total_nll), and threads. Windows are
// evaluated in parallel over --threads; the numbers are identical for every thread count.
#include <iostream>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "quantizer/cli/flag_usage.h"
#include "quantizer/perplexity.h"

ABSL_FLAG(std::string, model, "", "model directory (dense checkpoint or SpQR model)");
ABSL_FLAG(std::string, text, "", "evaluation text file");
ABSL_FLAG(int, seqlen, 2048, "window length in tokens (2..1048576)");
ABSL_FLAG(int64_t, max_windows, 0, "evaluate only the first N windows (0 = all)");
ABSL_FLAG(int, threads, 0, "threads windows are spread over (0 = all cores; else 1..1024)");

namespace {
constexpr char kSynopsis[] =
    "spqr-eval: perplexity of a dense or SpQR model directory on a text file.\n"
    "usage: spqr-eval --model DIR --text FILE [--seqlen 2048] [--max_windows 0] [--threads 0]";
}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("Perplexity of a dense or SpQR model directory on a text file.");
  if (spqr::WantsHelp(argc, argv)) {
    std::cout << spqr::FlagUsage(kSynopsis, "spqr_eval_main");
    return 0;
  }
  absl::ParseCommandLine(argc, argv);
  const std::string model = absl::GetFlag(FLAGS_model), text = absl::GetFlag(FLAGS_text);
  if (model.empty() || text.empty()) {
    std::cerr << "error: --model and --text are required (see --help)\n";
    return 2;
  }
  const int seqlen = absl::GetFlag(FLAGS_seqlen), threads = absl::GetFlag(FLAGS_threads);
  if (seqlen < 2 || seqlen > (1 << 20)) {
    std::cerr << "error: --seqlen must be in 2..1048576, got " << seqlen << "\n";
    return 2;
  }
  if (absl::GetFlag(FLAGS_max_windows) < 0) {
    std::cerr << "error: --max_windows must be >= 0 (0 = all windows), got "
              << absl::GetFlag(FLAGS_max_windows) << "\n";
    return 2;
  }
  if (threads < 0 || threads > 1024) {
    std::cerr << "error: --threads must be in 0..1024 (0 = all cores), got " << threads << "\n";
    return 2;
  }
  auto r = spqr::EvaluatePerplexity(model, text, absl::GetFlag(FLAGS_seqlen),
                                    absl::GetFlag(FLAGS_max_windows), absl::GetFlag(FLAGS_threads));
  if (!r.ok()) {
    std::cerr << "error: " << r.status().message() << "\n";
    return 1;
  }
  std::cout << r->ToJson(model, text) << std::endl;
  return 0;
}
