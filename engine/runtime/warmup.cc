#include "engine/runtime/warmup.h"

#include <algorithm>
#include <span>
#include <string>

#include "absl/strings/str_cat.h"
#include "engine/runtime/finite_check.h"

namespace spqr {

WarmUpPlan WarmUpPlanFor(const ModelConfig& config, const KvPoolShape& pool) {
  int64_t positions = int64_t{kWarmUpPrefillTokens} + kWarmUpDecodeSteps;
  if (config.max_position_embeddings > 0) {
    positions = std::min(positions, config.max_position_embeddings);
  }
  positions = std::min(positions, int64_t{pool.num_blocks} * pool.block_size);
  positions = std::max<int64_t>(positions, 1);
  WarmUpPlan plan;
  plan.decode_steps = static_cast<int32_t>(std::min<int64_t>(kWarmUpDecodeSteps, positions - 1));
  const int64_t vocab = std::max<int64_t>(config.vocab_size, 1);
  const int64_t first = config.bos_token_id >= 0 ? config.bos_token_id % vocab : 0;
  for (int64_t i = 0; i < positions - plan.decode_steps; ++i) {
    plan.prompt.push_back(static_cast<int32_t>((first + i) % vocab));
  }
  return plan;
}

namespace {

// One step's logits: the right count, all finite. `rows` rows, the last one after position
// `last_pos`.
absl::Status CheckLogits(const StepOutput& out, int32_t rows, int32_t expected_vocab,
                         int32_t last_pos, const std::string& step) {
  if (out.vocab_size <= 0 || (expected_vocab > 0 && out.vocab_size != expected_vocab) ||
      out.logits.size() != static_cast<size_t>(rows) * out.vocab_size) {
    return absl::InternalError(absl::StrCat(step, " returned ", out.logits.size(),
                                            " logits of vocab_size ", out.vocab_size, ", expected ",
                                            rows, " rows"));
  }
  const int64_t bad = FirstNonFinite(out.logits.data(), int64_t{rows} * out.vocab_size);
  if (bad < 0) return absl::OkStatus();
  const int64_t row = bad / out.vocab_size;
  return absl::InternalError(absl::StrCat(step, " produced a non-finite logit (", out.logits[bad],
                                          ") after position ", last_pos - (rows - 1) + row,
                                          " for vocabulary entry ", bad % out.vocab_size,
                                          "; the model cannot be served"));
}

}  // namespace

absl::StatusOr<int32_t> RunWarmUp(Backend& backend, const WarmUpPlan& plan,
                                  const KvPoolShape& pool) {
  const int32_t prompt_len = static_cast<int32_t>(plan.prompt.size());
  const int32_t positions = prompt_len + plan.decode_steps;
  std::vector<int32_t> block_table((positions + pool.block_size - 1) / pool.block_size);
  for (size_t i = 0; i < block_table.size(); ++i) block_table[i] = static_cast<int32_t>(i);
  std::vector<int32_t> tokens = plan.prompt;
  tokens.reserve(positions);

  const std::string prefill = absl::StrCat("warm-up prefill (", prompt_len, " tokens)");
  StepPlan step;
  step.seqs.push_back({std::span<const int32_t>(tokens), 0, block_table, prompt_len});
  StepOutput out;
  if (absl::Status s = backend.Forward(step, &out); !s.ok()) {
    return absl::Status(s.code(), absl::StrCat(prefill, ": ", s.message()));
  }
  if (absl::Status s = CheckLogits(out, prompt_len, 0, prompt_len - 1, prefill); !s.ok()) return s;
  const int32_t vocab = out.vocab_size;

  for (int32_t k = 1; k <= plan.decode_steps; ++k) {
    // Greedy, like a temperature-0 request: the token the model itself predicts.
    const float* last = out.row(out.logits.size() / vocab - 1);
    tokens.push_back(static_cast<int32_t>(std::max_element(last, last + vocab) - last));
    const int32_t pos = static_cast<int32_t>(tokens.size()) - 1;
    const std::string decode =
        absl::StrCat("warm-up decode step ", k, " of ", plan.decode_steps, " at position ", pos);
    step.seqs[0] = {std::span<const int32_t>(tokens).subspan(pos, 1), pos, block_table, 1};
    if (absl::Status s = backend.Forward(step, &out); !s.ok()) {
      return absl::Status(s.code(), absl::StrCat(decode, ": ", s.message()));
    }
    if (absl::Status s = CheckLogits(out, 1, vocab, pos, decode); !s.ok()) return s;
  }
  return vocab;
}

}  // namespace spqr
