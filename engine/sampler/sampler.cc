#include "engine/sampler/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "engine/sampler/philox.h"

namespace spqr {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Lowest index among the maxima.
int32_t Argmax(std::span<const float> values) {
  int32_t best = 0;
  for (int32_t i = 1; i < static_cast<int32_t>(values.size()); ++i) {
    if (values[i] > values[best]) best = i;
  }
  return best;
}

}  // namespace

TokenLogprob ComputeTokenLogprob(std::span<const float> logits, int32_t token_id, int32_t top_n) {
  const int32_t vocab = static_cast<int32_t>(logits.size());
  const float max_logit = logits[Argmax(logits)];
  double sum = 0.0;
  for (float l : logits) sum += std::exp(static_cast<double>(l) - max_logit);
  const double log_z = max_logit + std::log(sum);

  TokenLogprob out;
  out.token_id = token_id;
  out.logprob = static_cast<float>(logits[token_id] - log_z);
  out.is_greedy = logits[token_id] >= max_logit;
  top_n = std::min(top_n, vocab);
  if (top_n > 0) {
    std::vector<int32_t> ids(vocab);
    for (int32_t i = 0; i < vocab; ++i) ids[i] = i;
    std::partial_sort(ids.begin(), ids.begin() + top_n, ids.end(), [&](int32_t a, int32_t b) {
      return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
    });
    out.top.reserve(top_n);
    for (int32_t i = 0; i < top_n; ++i) {
      out.top.push_back({ids[i], static_cast<float>(logits[ids[i]] - log_z)});
    }
  }
  return out;
}

void Sampler::ApplyPenalties(const SamplingParams& params, const SamplingHistory& history) {
  const int32_t vocab = static_cast<int32_t>(work_.size());
  auto in_vocab = [vocab](int32_t t) { return t >= 0 && t < vocab; };
  if (params.repetition_penalty != 1.0f) {
    seen_.assign(vocab, 0);
    auto penalize = [&](std::span<const int32_t> tokens) {
      for (int32_t t : tokens) {
        if (!in_vocab(t) || seen_[t]) continue;
        seen_[t] = 1;
        work_[t] = work_[t] > 0 ? work_[t] / params.repetition_penalty
                                : work_[t] * params.repetition_penalty;
      }
    };
    penalize(history.prompt_tokens);
    penalize(history.generated_tokens);
  }
  if (params.presence_penalty != 0.0f || params.frequency_penalty != 0.0f) {
    counts_.assign(vocab, 0);
    for (int32_t t : history.generated_tokens) {
      if (in_vocab(t)) ++counts_[t];
    }
    for (int32_t t = 0; t < vocab; ++t) {
      if (counts_[t] == 0) continue;
      work_[t] -= params.presence_penalty + params.frequency_penalty * counts_[t];
    }
  }
}

SampleResult Sampler::Sample(std::span<const float> logits, const SamplingParams& params,
                             const SamplingHistory& history, SamplerRng* rng, bool want_logprob,
                             int32_t top_n) {
  const int32_t vocab = static_cast<int32_t>(logits.size());
  work_.assign(logits.begin(), logits.end());
  ApplyPenalties(params, history);
  for (int32_t t : history.banned_tokens) {
    if (t >= 0 && t < vocab) work_[t] = kNegInf;
  }

  SampleResult result;
  if (params.temperature <= 0.0f) {
    result.token_id = Argmax(work_);
  } else {
    // Candidates are the tokens not banned; probabilities relative to the best candidate so that
    // exp() never overflows.
    candidates_.clear();
    for (int32_t t = 0; t < vocab; ++t) {
      if (work_[t] != kNegInf) candidates_.push_back(t);
    }
    if (candidates_.empty()) {
      // Everything banned (cannot happen with a real vocabulary): fall back to the raw argmax.
      result.token_id = Argmax(logits);
    } else {
      auto better = [this](int32_t a, int32_t b) {
        return work_[a] > work_[b] || (work_[a] == work_[b] && a < b);
      };
      if (params.top_k > 0 && params.top_k < static_cast<int32_t>(candidates_.size())) {
        std::nth_element(candidates_.begin(), candidates_.begin() + params.top_k, candidates_.end(),
                         better);
        candidates_.resize(params.top_k);
      }
      // Top-k survivors are walked most likely first; without top-k/top-p, in id order.
      if (params.top_k > 0) std::sort(candidates_.begin(), candidates_.end(), better);

      float max_logit = kNegInf;
      for (int32_t t : candidates_) max_logit = std::max(max_logit, work_[t]);
      const double inv_temperature = 1.0 / params.temperature;
      // Unnormalized probabilities, by token id (exp once per candidate).
      weights_.resize(vocab);
      double total = 0.0;
      for (int32_t t : candidates_) {
        weights_[t] = std::exp((static_cast<double>(work_[t]) - max_logit) * inv_temperature);
        total += weights_[t];
      }
      auto weight = [this](int32_t t) { return weights_[t]; };
      size_t kept = candidates_.size();
      if (params.top_p < 1.0f) {
        // Smallest prefix (most likely first) whose mass reaches top_p; at least one token.
        // Sorting the whole vocabulary each step is the slow part of nucleus sampling, so only
        // the best `window` candidates are sorted, growing the window until it holds the
        // nucleus (exact: the window is always the true top of the order).
        const size_t n = candidates_.size();
        size_t window = std::min<size_t>(n, 64);
        while (true) {
          if (params.top_k <= 0) {
            if (window < n) {
              std::nth_element(candidates_.begin(), candidates_.begin() + window, candidates_.end(),
                               better);
            }
            std::sort(candidates_.begin(), candidates_.begin() + window, better);
          }
          double mass = 0.0;
          size_t found = 0;
          for (size_t i = 0; i < window; ++i) {
            mass += weight(candidates_[i]);
            if (mass >= params.top_p * total) {
              found = i + 1;
              break;
            }
          }
          if (found > 0 || window == n) {
            kept = found > 0 ? found : n;
            break;
          }
          window = std::min(n, window * 4);
        }
      }
      probs_.resize(kept);
      for (size_t i = 0; i < kept; ++i) probs_[i] = weight(candidates_[i]);
      if (params.min_p > 0.0f) {
        // The best candidate has probability weight exp(0) = 1 before normalization.
        const double threshold = params.min_p;
        for (size_t i = 0; i < kept; ++i) {
          if (probs_[i] < threshold) probs_[i] = 0.0;
        }
      }
      double kept_total = 0.0;
      for (size_t i = 0; i < kept; ++i) kept_total += probs_[i];
      const double target = PhiloxUniform(rng->seed, rng->draws++) * kept_total;
      double cumulative = 0.0;
      result.token_id = -1;
      int32_t last_positive = candidates_[0];
      for (size_t i = 0; i < kept; ++i) {
        if (probs_[i] <= 0.0) continue;
        last_positive = candidates_[i];
        cumulative += probs_[i];
        if (target < cumulative) {
          result.token_id = candidates_[i];
          break;
        }
      }
      // Rounding can leave target == cumulative at the very end: take the last kept token.
      if (result.token_id < 0) result.token_id = last_positive;
    }
  }
  if (want_logprob) result.logprob = ComputeTokenLogprob(logits, result.token_id, top_n);
  return result;
}

}  // namespace spqr
