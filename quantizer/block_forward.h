// fp32 forward of one LLaMA decoder block over calibration sequences, with hooks that feed each
// linear layer's input to its Hessian accumulator. Used by the model quantizer and the perplexity
// evaluator. The layer loop is the engine's (RunLlamaLayer, engine/backend/forward/llama_forward.h)
// over the quantizer's own ops (block_forward.cc): Eigen GEMMs on fp32 weights, full-sequence
// causal attention without a KV pool, RMSNorm summed in double. So the op order is shared with the
// serving backends while the arithmetic stays independent of the engine's kernels.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/model/llama_weights.h"
#include "engine/model/model_config.h"
#include "quantizer/hessian.h"

namespace spqr {

struct DenseLinear {
  std::vector<float> weight;  // [out][in]
  std::vector<float> bias;    // [out] or empty
  int64_t out_features = 0;
  int64_t in_features = 0;
};

// The seven projections in quantization order; names as in the checkpoint.
inline constexpr const char* kBlockLinearNames[7] = {
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    "mlp.gate_proj",    "mlp.up_proj",      "mlp.down_proj"};

struct DenseBlock {
  std::vector<float> input_norm, post_norm;
  DenseLinear linears[7];  // order of kBlockLinearNames
};

// Converts an F32/F16/BF16 tensor to fp32.
std::vector<float> TensorToF32(const TensorView& t);
DenseBlock LoadDenseBlock(const DecoderLayerWeights& layer);

// Inputs of the linears are accumulated into: [0] q/k/v input, [1] o_proj input, [2] gate/up
// input, [3] down_proj input (null entries are skipped).
struct BlockHessians {
  HessianAccumulator* inputs[4] = {nullptr, nullptr, nullptr, nullptr};
  // Where non-null, the same input is copied here instead ([tokens][in_features] row-major,
  // resized), for a caller that runs windows in parallel and accumulates them afterwards in
  // window order (QuantizeModel).
  std::vector<float>* captures[4] = {nullptr, nullptr, nullptr, nullptr};
};

// Reusable working memory of BlockForward (grown on demand, contents are scratch). Passing the
// same object to consecutive calls skips the allocation and page faults of ~tokens * (4 hidden
// + 2 intermediate + 4 head_dim * heads) fresh floats per call. One object per calling thread.
struct BlockForwardScratch {
  std::vector<float> storage;
};

// out[t] = block(x)[t] for one sequence of `tokens` tokens at positions 0..tokens-1
// (x, out: [tokens][hidden]; may not alias). Attention runs as per-head GEMMs (scores = Q K^T over
// the causal prefix, row softmax, P V) with heads spread over `threads` OpenMP threads
// (<= 0: omp_get_max_threads()); the projections' Eigen GEMMs use `threads` threads too. For a
// given thread count the result is deterministic; with threads == 1 everything is serial and the
// call may be made from inside a parallel region (one window per thread).
void BlockForward(const DenseBlock& block, const ModelConfig& config, const float* inv_freq,
                  const float* x, int64_t tokens, float* out, const BlockHessians* hessians,
                  int threads);
// The same with caller-owned working memory.
void BlockForward(const DenseBlock& block, const ModelConfig& config, const float* inv_freq,
                  const float* x, int64_t tokens, float* out, const BlockHessians* hessians,
                  int threads, BlockForwardScratch* scratch);

}  // namespace spqr
