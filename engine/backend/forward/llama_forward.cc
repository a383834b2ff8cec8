#include "engine/backend/forward/llama_forward.h"

#include <unordered_set>
#include <vector>

#include "absl/strings/str_format.h"
#include "engine/util/status_macros.h"

namespace spqr {

absl::Status ValidateStepPlan(const StepPlan& plan, int64_t vocab_size, const KvPoolShape& pool,
                              const char* backend) {
  if (pool.num_blocks <= 0 || pool.block_size <= 0) {
    return absl::FailedPreconditionError(
        absl::StrFormat("%s backend: Forward before AllocateKvPool", backend));
  }
  const int64_t bs = pool.block_size;
  std::unordered_set<int64_t> written_slots;
  for (size_t i = 0; i < plan.seqs.size(); ++i) {
    const SequenceStep& s = plan.seqs[i];
    const int64_t n = static_cast<int64_t>(s.tokens.size());
    if (n == 0) return absl::InvalidArgumentError(absl::StrFormat("seqs[%d]: no tokens", i));
    if (s.start_pos < 0) {
      return absl::InvalidArgumentError(
          absl::StrFormat("seqs[%d]: start_pos %d is negative", i, s.start_pos));
    }
    if (s.num_logits < 0 || s.num_logits > n) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "seqs[%d]: num_logits %d outside [0, %d] (the chunk's tokens)", i, s.num_logits, n));
    }
    for (int64_t t = 0; t < n; ++t) {
      if (s.tokens[t] < 0 || s.tokens[t] >= vocab_size) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "seqs[%d].tokens[%d]: id %d outside [0, %d)", i, t, s.tokens[t], vocab_size));
      }
    }
    const int64_t end = static_cast<int64_t>(s.start_pos) + n;
    const int64_t blocks_needed = (end + bs - 1) / bs;
    if (static_cast<int64_t>(s.block_table.size()) < blocks_needed) {
      return absl::InvalidArgumentError(
          absl::StrFormat("seqs[%d]: block table has %d blocks, positions [0, %d) need %d", i,
                          s.block_table.size(), end, blocks_needed));
    }
    for (int64_t b = 0; b < blocks_needed; ++b) {
      if (s.block_table[b] < 0 || s.block_table[b] >= pool.num_blocks) {
        return absl::InvalidArgumentError(
            absl::StrFormat("seqs[%d].block_table[%d]: block %d outside the pool [0, %d)", i, b,
                            s.block_table[b], pool.num_blocks));
      }
    }
    // Two sequences writing one slot in the same step would race; reject it.
    for (int64_t p = s.start_pos; p < end; ++p) {
      const int64_t slot = static_cast<int64_t>(s.block_table[p / bs]) * bs + p % bs;
      if (!written_slots.insert(slot).second) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "seqs[%d]: position %d writes KV slot %d of block %d, already written in this step", i,
            p, p % bs, s.block_table[p / bs]));
      }
    }
  }
  return absl::OkStatus();
}

absl::Status RunLlamaLayer(const DecoderLayerWeights& l, int64_t index, float eps,
                           ForwardOps& ops) {
  // Attention block.
  RETURN_IF_ERROR(ops.RmsNorm(Act::kX, l.input_layernorm, eps, Act::kH));
  const Projection qkv[] = {{&l.q_proj, Act::kQ}, {&l.k_proj, Act::kK}, {&l.v_proj, Act::kV}};
  RETURN_IF_ERROR(ops.Project(Act::kH, qkv));
  RETURN_IF_ERROR(ops.Rope(Act::kQ, Act::kK));
  RETURN_IF_ERROR(ops.StoreKv(index, Act::kK, Act::kV));
  RETURN_IF_ERROR(ops.Attention(index, Act::kQ, Act::kAttn));
  const Projection o[] = {{&l.o_proj, Act::kProj}};
  RETURN_IF_ERROR(ops.Project(Act::kAttn, o));
  RETURN_IF_ERROR(ops.AddInPlace(Act::kX, Act::kProj));
  // MLP block.
  RETURN_IF_ERROR(ops.RmsNorm(Act::kX, l.post_attention_layernorm, eps, Act::kH));
  const Projection gate_up[] = {{&l.gate_proj, Act::kGate}, {&l.up_proj, Act::kUp}};
  RETURN_IF_ERROR(ops.Project(Act::kH, gate_up));
  RETURN_IF_ERROR(ops.SwiGlu(Act::kGate, Act::kUp, Act::kGate));
  const Projection down[] = {{&l.down_proj, Act::kProj}};
  RETURN_IF_ERROR(ops.Project(Act::kGate, down));
  RETURN_IF_ERROR(ops.AddInPlace(Act::kX, Act::kProj));
  return absl::OkStatus();
}

absl::Status RunLlamaForward(const LlamaWeights& w, const StepPlan& plan, ForwardOps& ops,
                             StepOutput* out) {
  const ModelConfig& c = w.config;
  std::vector<int32_t> ids;
  std::vector<int64_t> positions;
  std::vector<StepSequence> seqs;
  std::vector<int64_t> logit_rows;
  for (const SequenceStep& s : plan.seqs) {
    const int64_t row = static_cast<int64_t>(ids.size());
    const int64_t n = static_cast<int64_t>(s.tokens.size());
    seqs.push_back({row, n, s.start_pos, s.block_table});
    for (int64_t i = 0; i < n; ++i) {
      ids.push_back(s.tokens[i]);
      positions.push_back(s.start_pos + i);
    }
    for (int64_t r = row + n - s.num_logits; r < row + n; ++r) logit_rows.push_back(r);
  }
  out->vocab_size = static_cast<int32_t>(c.vocab_size);
  out->logits.assign(logit_rows.size() * c.vocab_size, 0.0f);
  if (ids.empty()) return absl::OkStatus();

  RETURN_IF_ERROR(ops.BeginStep({ids, positions, seqs, logit_rows}));
  const float eps = static_cast<float>(c.rms_norm_eps);
  RETURN_IF_ERROR(ops.Embed(w.embed_tokens, Act::kX));
  for (int64_t li = 0; li < c.num_hidden_layers; ++li) {
    RETURN_IF_ERROR(RunLlamaLayer(w.layers[li], li, eps, ops));
  }
  if (logit_rows.empty()) return absl::OkStatus();

  // Final norm and lm_head only for the rows whose logits were asked for.
  RETURN_IF_ERROR(ops.GatherLogitRows(Act::kX, Act::kFinal));
  RETURN_IF_ERROR(ops.RmsNorm(Act::kFinal, w.norm, eps, Act::kFinal));
  const Projection lm_head[] = {{&w.lm_head, Act::kLogits}};
  RETURN_IF_ERROR(ops.Project(Act::kFinal, lm_head));
  return ops.ReadLogits(Act::kLogits, out->logits);
}

}  // namespace spqr
