// Token sampling from one row of logits.
//
// Order of the transforms (each one is skipped when its parameter is "off"):
//   1. repetition penalty (CTRL): for every token seen in prompt or output, a positive logit is
//      divided by the penalty and a negative one multiplied by it;
//   2. presence / frequency penalties (OpenAI): over generated tokens only,
//      logit -= presence_penalty * [count > 0] + frequency_penalty * count;
//   3. banned tokens (eos and stop tokens before min_new_tokens) are set to -inf;
//   4. temperature: 0 means greedy (argmax, lowest index on ties); otherwise logits / temperature;
//   5. top-k, 6. top-p (nucleus, over the top-k survivors), 7. min-p (p >= min_p * p_max);
//   8. one draw from the remaining distribution, walking the kept tokens most likely first (ties:
//      lower id) when top-k or top-p is on, in id order otherwise.
// The draw is u = PhiloxUniform(seed, draw_index): a request with a seed produces the same tokens
// every time; without one the engine picks a random seed per request.
//
// Logprobs (chosen token and top-N alternatives) are the log-softmax of the RAW logits, before any
// of the transforms above: they describe the model, not the sampling settings, which is what
// scoring and evaluation harnesses expect.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "engine/runtime/request.h"

namespace spqr {

// A request's random stream: draw n uses PhiloxUniform(seed, n).
struct SamplerRng {
  uint64_t seed = 0;
  uint64_t draws = 0;
};

// What the sampler needs to know about the sequence besides its logits.
struct SamplingHistory {
  std::span<const int32_t> prompt_tokens;
  std::span<const int32_t> generated_tokens;
  std::span<const int32_t> banned_tokens;  // never sampled (min_new_tokens masks eos/stop ids)
};

struct SampleResult {
  int32_t token_id = 0;
  TokenLogprob logprob;  // filled only when requested
};

// The log-softmax logprob of `token_id` in `logits` (raw), whether it is a greedy choice (its logit
// equals the maximum), and the `top_n` most likely tokens (ties: lower id first).
TokenLogprob ComputeTokenLogprob(std::span<const float> logits, int32_t token_id, int32_t top_n);

// Reusable sampler; keeps scratch buffers between calls, so one instance per thread.
class Sampler {
 public:
  // Returns the chosen token. `rng` advances by one draw when the choice is random (temperature
  // > 0). When `want_logprob` is set, result.logprob holds the chosen token's raw logprob and
  // `top_n` alternatives.
  SampleResult Sample(std::span<const float> logits, const SamplingParams& params,
                      const SamplingHistory& history, SamplerRng* rng, bool want_logprob,
                      int32_t top_n);

 private:
  void ApplyPenalties(const SamplingParams& params, const SamplingHistory& history);

  std::vector<float> work_;
  std::vector<int32_t> candidates_;
  std::vector<double> probs_;
  std::vector<double> weights_;
  std::vector<uint8_t> seen_;
  std::vector<int32_t> counts_;
};

}  // namespace spqr
