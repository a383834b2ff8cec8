// Perplexity of a model directory (dense 16-bit checkpoint or SpQR model) with the protocol of
// spqr-method.md section 8: the whole text tokenized at once (no BOS), cut into non-overlapping
// windows of `seqlen` tokens (tail dropped); a window's loss is the mean cross-entropy of tokens
// 1..L-1 given their prefix; ppl = exp(mean of the window losses). SpQR layers are decoded with the
// format's reference decoder (DequantizeSpqrLayer), so this measures exactly the quantizer's W_hat.
// An fp32 reference forward (quantizer/block_forward.h), independent of the serving engine.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"

namespace spqr {

struct PerplexityResult {
  int64_t windows = 0;
  int64_t tokens_scored = 0;  // windows * (seqlen - 1)
  int seqlen = 0;
  double total_nll = 0.0;  // sum over scored tokens (nats)
  double mean_loss = 0.0;  // mean over windows of the window's mean NLL
  double ppl = 0.0;
  double seconds = 0.0;
  int threads = 0;  // OpenMP threads the windows were spread over (does not change the numbers)
  std::string ToJson(const std::string& model, const std::string& text) const;
};

// max_windows = 0: all windows. threads <= 0: omp_get_max_threads(). Windows are evaluated in
// parallel, one window per thread at a time, and reduced in window order, so the result is
// bit-identical for every thread count.
absl::StatusOr<PerplexityResult> EvaluatePerplexity(const std::string& model_dir,
                                                    const std::string& text_path, int seqlen,
                                                    int64_t max_windows, int threads);

}  // namespace spqr
