// The engine forward of perplexity.h: the model bound as the server binds it (BindLlamaWeights:
// SpQR layers packed, dense tensors mapped from the shards) on the CPU backend with the requested
// kernels, one window at a time.
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <memory>

#include "absl/strings/str_cat.h"
#include "engine/backend/backend.h"
#include "engine/backend/cpu/cpu_backend.h"
#include "engine/model/llama_weights.h"
#include "engine/model/safetensors.h"
#include "engine/util/status_macros.h"
#include "quantizer/perplexity_forwards.h"

namespace spqr::perplexity_internal {

absl::StatusOr<ForwardRun> RunEngineForward(const std::string& model_dir, const ModelConfig& c,
                                            const Windows& windows,
                                            const PerplexityOptions& options) {
  if (options.engine_prefill_chunk < 1) {
    return absl::InvalidArgumentError(absl::StrCat("engine prefill chunk must be >= 1 token, got ",
                                                   options.engine_prefill_chunk));
  }
  CpuBackendOptions backend_options;
  ASSIGN_OR_RETURN(backend_options.spqr_kernel, ParseSpqrCpuKernel(options.spqr_kernel));
  ASSIGN_OR_RETURN(backend_options.dense_kernel, ParseDenseCpuKernel(options.dense_kernel));
  ForwardRun run;
  run.threads = options.threads > 0 ? options.threads : omp_get_max_threads();
  backend_options.num_threads = run.threads;
  ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> checkpoint, Checkpoint::Open(model_dir));
  ASSIGN_OR_RETURN(std::shared_ptr<const LlamaWeights> weights,
                   BindLlamaWeights(std::shared_ptr<const Checkpoint>(std::move(checkpoint)), c));
  // The backend holds the weights (its own repacked copy with the int8 kernel); nothing else here
  // keeps a second reference.
  ASSIGN_OR_RETURN(std::unique_ptr<Backend> backend,
                   CreateCpuBackend(std::move(weights), backend_options));
  run.spqr_kernel = SpqrCpuKernelName(ResolveSpqrCpuKernel(backend_options.spqr_kernel));
  run.dense_kernel = DenseCpuKernelName(ResolveDenseCpuKernel(backend_options.dense_kernel));
  run.backend = backend->description();

  // The last token of a window is only a target: the forward runs over tokens 0..L-2, whose
  // logits predict tokens 1..L-1. One window's KV cache, reused by every window.
  const int32_t fed = windows.seqlen - 1;
  KvPoolShape shape;
  shape.block_size = 16;
  shape.num_blocks = (fed + shape.block_size - 1) / shape.block_size;
  RETURN_IF_ERROR(backend->AllocateKvPool(shape));
  std::vector<int32_t> table(static_cast<size_t>(shape.num_blocks));
  for (int32_t b = 0; b < shape.num_blocks; ++b) table[b] = b;

  const auto start = std::chrono::steady_clock::now();
  run.window_nll.assign(static_cast<size_t>(windows.count), 0.0);
  RowScorer scorer;
  StepOutput out;
  for (int64_t w = 0; w < windows.count; ++w) {
    const int32_t* tokens = windows.window(w);
    // Chunks of the prefix: positions [first, first + n) attend to the cache of [0, first),
    // written by the earlier chunks of this window (a new window overwrites it from position 0).
    for (int32_t first = 0; first < fed; first += options.engine_prefill_chunk) {
      const int32_t n = std::min(options.engine_prefill_chunk, fed - first);
      StepPlan plan;
      SequenceStep s;
      s.tokens = std::span<const int32_t>(tokens + first, static_cast<size_t>(n));
      s.start_pos = first;
      s.block_table = table;
      s.num_logits = n;
      plan.seqs.push_back(s);
      absl::Status st = backend->Forward(plan, &out);
      if (!st.ok()) {
        return absl::Status(st.code(), absl::StrCat("window ", w, ", tokens ", first, "..",
                                                    first + n - 1, ": ", st.message()));
      }
      scorer.Add(out.logits.data(), out.vocab_size, tokens + first + 1, n, &run.window_nll[w]);
    }
  }
  run.eval_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return run;
}

}  // namespace spqr::perplexity_internal
