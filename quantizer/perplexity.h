// Perplexity of a model directory (dense 16-bit checkpoint or SpQR model) with the protocol of
// spqr-method.md section 8: the whole text tokenized at once (no BOS), cut into non-overlapping
// windows of `seqlen` tokens (tail dropped); a window's loss is the mean cross-entropy of tokens
// 1..L-1 given their prefix; ppl = exp(mean of the window losses). The code behind spqr-eval and
// spqr-kernel-ppl.
//
// Two forwards compute the logits; everything else (tokenization, windows, log-softmax, reduction)
// is shared, so they score exactly the same tokens.
//
// kEngine: the engine's CPU backend (engine/backend/cpu), the code the server runs. SpQR layers
// stay packed and are multiplied by the backend's kernels (SpQR exact or int8, dense exact or
// bf16: cpu_backend.h). One window at a time, its prefix fed in chunks of engine_prefill_chunk
// tokens, the ops spread over `threads`. Memory: the packed weights (mapped from the shards) + one
// window's KV cache (fp32) + one chunk's activations and logits.
//
// kReference: the quantizer's own fp32 forward (quantizer/block_forward.h, Eigen GEMMs), every
// SpQR layer decoded up front by the format's reference decoder (DequantizeSpqrLayer): exactly the
// quantizer's W_hat, independent of the serving code. Windows in parallel, one per thread.
// Memory: every weight as fp32 (4 bytes per parameter) + per-thread window buffers.
//
// With exact kernels the two agree to ~1e-9 relative on total NLL (they differ only in summation
// order; perplexity_forward_test bounds it at 1e-6).
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"

namespace spqr {

enum class PerplexityForward { kEngine, kReference };

// "engine" | "reference" -> forward; INVALID_ARGUMENT naming the value otherwise.
absl::StatusOr<PerplexityForward> ParsePerplexityForward(const std::string& name);
const char* PerplexityForwardName(PerplexityForward forward);

struct PerplexityOptions {
  int seqlen = 2048;        // window length in tokens, >= 2
  int64_t max_windows = 0;  // 0: all windows
  // <= 0: omp_get_max_threads(). Never changes the numbers: the reference forward reduces windows
  // in window order, the engine's kernels are thread-count independent.
  int threads = 0;
  PerplexityForward forward = PerplexityForward::kEngine;
  // Engine forward only (ignored by the reference forward): the CPU backend's kernels, the values
  // of the server's model.spqr_cpu_kernel ("exact", "int8", "auto") and model.dense_cpu_kernel
  // ("exact", "bf16", "auto").
  std::string spqr_kernel = "exact";
  std::string dense_kernel = "exact";
  // Engine forward only: tokens per Forward call (>= 1). The CPU backend's logits are
  // bit-identical however a prefix is chunked (cpu_backend.h), so this bounds the activation and
  // logit memory of long windows without changing any number. 64: on the synthetic 197 M-parameter
  // model (docs/quality.md; 2 windows of 512, one run each under load) no slower than 512-token
  // calls, with less peak RSS: 23 % (SpQR exact), 15 % (bf16), 6 % (SpQR int8).
  int engine_prefill_chunk = 64;
};

struct PerplexityResult {
  int64_t windows = 0;
  int64_t tokens_scored = 0;  // windows * (seqlen - 1)
  int seqlen = 0;
  double total_nll = 0.0;  // sum over scored tokens (nats)
  double mean_loss = 0.0;  // mean over windows of the window's mean NLL
  double ppl = 0.0;
  double seconds = 0.0;       // all of it: loading, tokenizing, the forwards
  double eval_seconds = 0.0;  // the forwards over the windows only (not in the JSON)
  int threads = 0;            // threads used (does not change the numbers)
  std::string forward;        // "engine" or "reference"
  // Engine forward: the kernels that ran ("auto" resolved for this CPU: "exact"/"int8",
  // "exact"/"bf16"), and the backend's own description (threads, how many SpQR layers the int8
  // kernel took). Empty for the reference forward (null in the JSON).
  std::string spqr_kernel, dense_kernel;
  std::string backend;
  // One JSON object: model, text, seq_len, windows, tokens_scored, total_nll, mean_loss, ppl,
  // seconds, threads, forward, spqr_kernel, dense_kernel, backend.
  std::string ToJson(const std::string& model, const std::string& text) const;
};

// Errors name the problem: seqlen < 2, engine_prefill_chunk < 1, a text shorter than one window,
// an unknown kernel name, a kernel this CPU lacks, a model directory the engine refuses (with the
// engine's message).
absl::StatusOr<PerplexityResult> EvaluatePerplexity(const std::string& model_dir,
                                                    const std::string& text_path,
                                                    const PerplexityOptions& options);

}  // namespace spqr
