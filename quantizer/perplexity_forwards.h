// Internal to quantizer/perplexity*.cc: the pieces of the perplexity protocol both forwards share
// (perplexity.h), and the two forwards. Not an API.
#pragma once

#include <Eigen/Core>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/model/model_config.h"
#include "quantizer/perplexity.h"

namespace spqr::perplexity_internal {

// The evaluation windows: `count` non-overlapping windows of `seqlen` tokens at the start of `ids`.
struct Windows {
  std::vector<int32_t> ids;  // the whole text, tokenized at once without BOS
  int seqlen = 0;
  int64_t count = 0;
  const int32_t* window(int64_t w) const { return ids.data() + w * seqlen; }
};

// Adds the NLL (nats) of each row's target: for r in [0, rows), -log softmax(logits row r)
// [targets[r]], summed into *nll in row order. fp32 (vectorized) exp, double normalizer; the
// scratch is reused across calls.
class RowScorer {
 public:
  void Add(const float* logits, int64_t vocab, const int32_t* targets, int64_t rows, double* nll);

 private:
  Eigen::ArrayXf exps_;
};

// What one forward computed: every window's total NLL (tokens 1..L-1), in window order.
struct ForwardRun {
  std::vector<double> window_nll;
  int threads = 0;
  double eval_seconds = 0.0;
  std::string spqr_kernel, dense_kernel, backend;  // engine only
};

absl::StatusOr<ForwardRun> RunReferenceForward(const std::string& model_dir, const ModelConfig& c,
                                               const Windows& windows, int threads);
absl::StatusOr<ForwardRun> RunEngineForward(const std::string& model_dir, const ModelConfig& c,
                                            const Windows& windows,
                                            const PerplexityOptions& options);

}  // namespace spqr::perplexity_internal
