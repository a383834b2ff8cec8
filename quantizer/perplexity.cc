// The protocol both forwards share: tokenization, windows, scoring, reduction, JSON.
#include "quantizer/perplexity.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <memory>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "engine/model/model_config.h"
#include "engine/tokenizer/tokenizer.h"
#include "engine/util/status_macros.h"
#include "nlohmann/json.hpp"
#include "quantizer/perplexity_forwards.h"

namespace spqr {

absl::StatusOr<PerplexityForward> ParsePerplexityForward(const std::string& name) {
  if (name == "engine") return PerplexityForward::kEngine;
  if (name == "reference") return PerplexityForward::kReference;
  return absl::InvalidArgumentError(
      absl::StrCat("perplexity forward \"", name, "\": expected engine or reference"));
}

const char* PerplexityForwardName(PerplexityForward forward) {
  return forward == PerplexityForward::kEngine ? "engine" : "reference";
}

namespace perplexity_internal {

void RowScorer::Add(const float* logits, int64_t vocab, const int32_t* targets, int64_t rows,
                    double* nll) {
  exps_.resize(vocab);
  for (int64_t r = 0; r < rows; ++r) {
    // log-softmax with fp32 (vectorized) exp and a double normalizer. exps_ is Eigen-aligned
    // storage, so its sum is reduced in the same order wherever the logits live.
    Eigen::Map<const Eigen::ArrayXf> row(logits + r * vocab, vocab);
    const float mx = row.maxCoeff();
    exps_ = (row - mx).exp();
    const double z = exps_.cast<double>().sum();
    *nll += (std::log(z) + mx) - row[targets[r]];
  }
}

}  // namespace perplexity_internal

absl::StatusOr<PerplexityResult> EvaluatePerplexity(const std::string& model_dir,
                                                    const std::string& text_path,
                                                    const PerplexityOptions& options) {
  using perplexity_internal::ForwardRun;
  const auto start = std::chrono::steady_clock::now();
  const int seqlen = options.seqlen;
  if (seqlen < 2)
    return absl::InvalidArgumentError(absl::StrCat("seqlen must be >= 2, got ", seqlen));
  ASSIGN_OR_RETURN(ModelConfig c, LoadModelConfig(model_dir));
  ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tok,
                   OpenModelTokenizer(model_dir, c.bos_token_id, c.eos_token_ids));
  std::ifstream in(text_path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read '", text_path, "'"));
  std::stringstream ss;
  ss << in.rdbuf();
  perplexity_internal::Windows windows;
  windows.ids = tok->Encode(ss.str(), /*add_bos=*/false);
  windows.seqlen = seqlen;
  windows.count = static_cast<int64_t>(windows.ids.size()) / seqlen;
  if (options.max_windows > 0) windows.count = std::min(windows.count, options.max_windows);
  if (windows.count == 0) {
    return absl::InvalidArgumentError(absl::StrCat("text '", text_path, "' has ",
                                                   windows.ids.size(),
                                                   " tokens, fewer than one window of ", seqlen));
  }
  ForwardRun run;
  if (options.forward == PerplexityForward::kEngine) {
    ASSIGN_OR_RETURN(run, perplexity_internal::RunEngineForward(model_dir, c, windows, options));
  } else {
    ASSIGN_OR_RETURN(
        run, perplexity_internal::RunReferenceForward(model_dir, c, windows, options.threads));
  }
  PerplexityResult r;
  r.seqlen = seqlen;
  r.windows = windows.count;
  r.threads = run.threads;
  r.forward = PerplexityForwardName(options.forward);
  r.spqr_kernel = run.spqr_kernel;
  r.dense_kernel = run.dense_kernel;
  r.backend = run.backend;
  r.eval_seconds = run.eval_seconds;
  // Window order, whatever order the forward computed them in.
  double loss_sum = 0.0;
  for (int64_t w = 0; w < windows.count; ++w) {
    r.total_nll += run.window_nll[w];
    loss_sum += run.window_nll[w] / (seqlen - 1);
  }
  r.tokens_scored = windows.count * (seqlen - 1);
  r.mean_loss = loss_sum / static_cast<double>(windows.count);
  r.ppl = std::exp(r.mean_loss);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return r;
}

std::string PerplexityResult::ToJson(const std::string& model, const std::string& text) const {
  auto or_null = [](const std::string& s) {
    return s.empty() ? nlohmann::ordered_json() : nlohmann::ordered_json(s);
  };
  return nlohmann::ordered_json({{"model", model},
                                 {"text", text},
                                 {"seq_len", seqlen},
                                 {"windows", windows},
                                 {"tokens_scored", tokens_scored},
                                 {"total_nll", total_nll},
                                 {"mean_loss", mean_loss},
                                 {"ppl", ppl},
                                 {"seconds", seconds},
                                 {"threads", threads},
                                 {"forward", forward},
                                 {"spqr_kernel", or_null(spqr_kernel)},
                                 {"dense_kernel", or_null(dense_kernel)},
                                 {"backend", or_null(backend)}})
      .dump();
}

}  // namespace spqr
