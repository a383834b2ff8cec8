// The op-level seam of the LLaMA forward (the interface ggml and llm.c teach): llama_forward.h
// writes the layer loop once against ForwardOps, and each backend implements the ops over its own
// memory (host memory on the CPU, device memory on CUDA). The loop never touches activations
// itself; it names buffers (Act) and passes the bound weights (LlamaWeights) by reference, so a
// backend that keeps its own copies of the weights (device buffers, repacked layouts) finds them
// by the address of the bound TensorView / LinearTensors it was created with.
#pragma once

#include <cstdint>
#include <span>

#include "absl/status/status.h"
#include "engine/model/llama_weights.h"
#include "engine/model/tensor.h"

namespace spqr {

// The activation buffers of one step, owned by the ops implementation. All are fp32, row-major,
// and sized by BeginStep. With n = the step's token rows and L = its logit rows:
//   kX, kH, kProj   [n, hidden]          residual stream, normed input, projection output
//   kQ, kAttn       [n, heads * head_dim]
//   kK, kV          [n, kv_heads * head_dim]
//   kGate, kUp      [n, intermediate]
//   kFinal          [L, hidden]          rows of kX whose logits are wanted
//   kLogits         [L, vocab]
// An op's row count is that of the buffers it touches (n, or L for kFinal/kLogits).
enum class Act { kX, kH, kProj, kQ, kAttn, kK, kV, kGate, kUp, kFinal, kLogits };

// One sequence of the step, as the ops see it (host memory; the ops copy what they need).
struct StepSequence {
  int64_t row_offset = 0;  // first row of the sequence in the [n, ...] buffers
  int64_t num_tokens = 0;  // rows [row_offset, row_offset + num_tokens)
  int64_t start_pos = 0;   // position of the first row; KV of [0, start_pos) is in the pool
  std::span<const int32_t> block_table;  // covers every position up to the last row (validated)
};

// Everything the ops need to know about a step, built by RunLlamaForward from a validated
// StepPlan. Spans stay valid until the step's last op returns.
struct StepLayout {
  std::span<const int32_t> token_ids;  // [n], in [0, vocab)
  std::span<const int64_t> positions;  // [n]
  std::span<const StepSequence> seqs;
  std::span<const int64_t> logit_rows;  // [L] rows of kX whose logits are wanted, in output order
};

// out = in · linear^T (+ bias), one of several projections of the same input.
struct Projection {
  const LinearTensors* linear = nullptr;
  Act out = Act::kProj;
};

// The ops of a LLaMA forward step. Ops run in call order (an implementation may enqueue them
// asynchronously, e.g. on a CUDA stream, as long as ReadLogits returns the finished result). An
// error names the op; after an error the step is abandoned (the caller may start a new one).
class ForwardOps {
 public:
  virtual ~ForwardOps() = default;

  // Starts a step: sizes every Act buffer for `step` and keeps what later ops need of it.
  virtual absl::Status BeginStep(const StepLayout& step) = 0;
  // out[r] = embed_tokens[token_ids[r]] (converted to fp32).
  virtual absl::Status Embed(const TensorView& embed_tokens, Act out) = 0;
  // out = in / sqrt(mean(in^2) + eps) * weight, row by row; out may equal in.
  virtual absl::Status RmsNorm(Act in, const TensorView& weight, float eps, Act out) = 0;
  // For each projection p: p.out = in · p.linear^T (+ bias). All read the same input, so an
  // implementation may prepare it once (quantize, permute, convert) for all of them.
  virtual absl::Status Project(Act in, std::span<const Projection> projections) = 0;
  // Rotary embedding of q ([n, heads, head_dim]) and k ([n, kv_heads, head_dim]) in place, at
  // each row's position, with the model's RoPE scaling.
  virtual absl::Status Rope(Act q, Act k) = 0;
  // Writes the rows of k and v into the KV pool at `layer`, each at the slot of its position.
  virtual absl::Status StoreKv(int64_t layer, Act k, Act v) = 0;
  // out = causal grouped-query attention of q over its own sequence's cache at `layer`
  // (positions [0, position of the row]); fp32 softmax. StoreKv of this layer ran first.
  virtual absl::Status Attention(int64_t layer, Act q, Act out) = 0;
  // out = silu(gate) * up, elementwise; out may equal gate or up.
  virtual absl::Status SwiGlu(Act gate, Act up, Act out) = 0;
  // x += y, elementwise.
  virtual absl::Status AddInPlace(Act x, Act y) = 0;
  // out[i] = in[logit_rows[i]].
  virtual absl::Status GatherLogitRows(Act in, Act out) = 0;
  // Copies `logits` ([L, vocab]) into `out` (host memory of exactly L * vocab floats), after every
  // op before it has finished.
  virtual absl::Status ReadLogits(Act logits, std::span<float> out) = 0;
};

}  // namespace spqr
