// The reference forward of perplexity.h: every projection decoded to fp32 up front (SpQR layers by
// DequantizeSpqrLayer), windows in parallel through the quantizer's BlockForward.
#include <omp.h>

#include <Eigen/Core>
#include <algorithm>
#include <chrono>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "engine/backend/cpu/rope.h"
#include "engine/format/spqr_layer.h"
#include "engine/format/spqr_tensors.h"
#include "engine/model/safetensors.h"
#include "engine/util/status_macros.h"
#include "quantizer/block_forward.h"
#include "quantizer/perplexity_forwards.h"

namespace spqr::perplexity_internal {
namespace {

using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

absl::StatusOr<std::vector<float>> Dense(const Checkpoint& ck, const std::string& name,
                                         int64_t numel) {
  ASSIGN_OR_RETURN(const TensorView* t, ck.Require(name));
  if (t->numel() != numel ||
      (t->dtype != DType::kF32 && t->dtype != DType::kF16 && t->dtype != DType::kBF16)) {
    return absl::InvalidArgumentError(absl::StrCat("tensor '", name,
                                                   "' has an unexpected shape "
                                                   "or dtype in ",
                                                   ck.dir()));
  }
  return TensorToF32(*t);
}

// A projection: SpQR-decoded when the checkpoint holds an SpQR layer there, else dense.
absl::Status LoadLinear(const Checkpoint& ck, const std::string& prefix, int64_t out, int64_t in,
                        DenseLinear* l) {
  const TensorLookup lookup = [&](const std::string& n) { return ck.Find(n); };
  l->out_features = out;
  l->in_features = in;
  if (HasSpqrLayer(lookup, prefix)) {
    ASSIGN_OR_RETURN(PackedSpqrLayer packed, SpqrLayerFromTensors(lookup, prefix));
    if (packed.out_features != out || packed.in_features != in) {
      return absl::InvalidArgumentError(absl::StrCat("SpQR layer '", prefix, "' is ",
                                                     packed.out_features, "x", packed.in_features,
                                                     ", the config implies ", out, "x", in));
    }
    ASSIGN_OR_RETURN(l->weight, DequantizeSpqrLayer(packed));
  } else {
    ASSIGN_OR_RETURN(l->weight, Dense(ck, prefix + ".weight", out * in));
  }
  if (ck.Find(prefix + ".bias") != nullptr) {
    ASSIGN_OR_RETURN(l->bias, Dense(ck, prefix + ".bias", out));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ForwardRun> RunReferenceForward(const std::string& model_dir, const ModelConfig& c,
                                               const Windows& windows, int threads) {
  ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> ck, Checkpoint::Open(model_dir));
  const int64_t hidden = c.hidden_size, vocab = c.vocab_size;
  ASSIGN_OR_RETURN(std::vector<float> embed,
                   Dense(*ck, "model.embed_tokens.weight", vocab * hidden));
  ASSIGN_OR_RETURN(std::vector<float> final_norm, Dense(*ck, "model.norm.weight", hidden));
  std::vector<float> head;
  if (c.tie_word_embeddings) {
    head = embed;
  } else {
    ASSIGN_OR_RETURN(head, Dense(*ck, "lm_head.weight", vocab * hidden));
  }
  const int64_t q_dim = c.num_attention_heads * c.head_dim,
                kv_dim = c.num_key_value_heads * c.head_dim;
  const int64_t shapes[7][2] = {{q_dim, hidden},
                                {kv_dim, hidden},
                                {kv_dim, hidden},
                                {hidden, q_dim},
                                {c.intermediate_size, hidden},
                                {c.intermediate_size, hidden},
                                {hidden, c.intermediate_size}};
  std::vector<DenseBlock> blocks(static_cast<size_t>(c.num_hidden_layers));
  for (int64_t b = 0; b < c.num_hidden_layers; ++b) {
    const std::string p = absl::StrCat("model.layers.", b, ".");
    ASSIGN_OR_RETURN(blocks[b].input_norm, Dense(*ck, p + "input_layernorm.weight", hidden));
    ASSIGN_OR_RETURN(blocks[b].post_norm,
                     Dense(*ck, p + "post_attention_layernorm.weight", hidden));
    for (int li = 0; li < 7; ++li) {
      RETURN_IF_ERROR(LoadLinear(*ck, p + kBlockLinearNames[li], shapes[li][0], shapes[li][1],
                                 &blocks[b].linears[li]));
    }
  }
  for (int32_t id : windows.ids) {
    if (id < 0 || id >= vocab) {
      return absl::InvalidArgumentError(
          absl::StrCat("the tokenizer of ", model_dir, " produced token id ", id,
                       ", outside vocab_size ", vocab, " of config.json"));
    }
  }
  const std::vector<float> inv_freq =
      cpu::ComputeRopeInvFreq(c.head_dim, c.rope_theta, c.rope_scaling);
  ForwardRun run;
  run.threads = threads > 0 ? threads : omp_get_max_threads();
  const int seqlen = windows.seqlen;
  const auto start = std::chrono::steady_clock::now();
  Eigen::Map<const RowMat> head_m(head.data(), vocab, hidden);
  // Windows are independent: each thread takes whole windows with its own buffers and a serial
  // forward (BlockForward with 1 thread, serial GEMMs), and the per-window NLLs are reduced in
  // window order by the caller, so the result does not depend on the thread count.
  run.window_nll.assign(static_cast<size_t>(windows.count), 0.0);
#pragma omp parallel num_threads(run.threads)
  {
    // Eigen's GEMMs (the LM head below) parallelize on omp_get_max_threads() unless they are
    // called from inside a team of more than one thread; for a team of one, this thread's
    // setting keeps them serial too.
    omp_set_num_threads(1);
    // Eigen-aligned, so that vectorized reductions sum in the same order in every thread.
    using AlignedFloats = std::vector<float, Eigen::aligned_allocator<float>>;
    AlignedFloats x(static_cast<size_t>(seqlen * hidden)), y(x.size());
    AlignedFloats logits(static_cast<size_t>(seqlen * vocab));
    RowScorer scorer;
    BlockForwardScratch scratch;
#pragma omp for schedule(dynamic, 1)
    for (int64_t w = 0; w < windows.count; ++w) {
      const int32_t* tokens = windows.window(w);
      for (int t = 0; t < seqlen; ++t) {
        std::copy_n(embed.begin() + static_cast<int64_t>(tokens[t]) * hidden, hidden,
                    x.begin() + t * hidden);
      }
      for (const DenseBlock& b : blocks) {
        BlockForward(b, c, inv_freq.data(), x.data(), seqlen, y.data(), nullptr, /*threads=*/1,
                     &scratch);
        std::swap(x, y);
      }
      for (int t = 0; t < seqlen; ++t) {
        double sq = 0.0;
        for (int64_t i = 0; i < hidden; ++i)
          sq += static_cast<double>(x[t * hidden + i]) * x[t * hidden + i];
        const float inv = static_cast<float>(1.0 / std::sqrt(sq / hidden + c.rms_norm_eps));
        for (int64_t i = 0; i < hidden; ++i)
          x[t * hidden + i] = x[t * hidden + i] * inv * final_norm[i];
      }
      Eigen::Map<const RowMat> xm(x.data(), seqlen, hidden);
      Eigen::Map<RowMat> lm(logits.data(), seqlen, vocab);
      lm.noalias() = xm * head_m.transpose();
      scorer.Add(logits.data(), vocab, tokens + 1, seqlen - 1, &run.window_nll[w]);
    }
  }
  run.eval_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return run;
}

}  // namespace spqr::perplexity_internal
