#include "server/request_validation.h"

#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace spqr {
namespace {

constexpr size_t kMaxRequestIdBytes = 128;
constexpr int32_t kMaxPriority = 1000;
constexpr int kMaxStopTokenIds = 1024;
constexpr float kMaxTemperature = 100.0f;
constexpr float kMaxRepetitionPenalty = 10.0f;
constexpr float kMaxAbsPenalty = 2.0f;

absl::Status Invalid(const std::string& message) { return absl::InvalidArgumentError(message); }

// `value` in [lo, hi]; NaN fails every comparison and is rejected too.
bool InClosed(double value, double lo, double hi) { return value >= lo && value <= hi; }

absl::Status CheckTokenIds(const google::protobuf::RepeatedField<int32_t>& ids,
                           const std::string& field, int32_t vocab_size) {
  for (int i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= vocab_size) {
      return Invalid(absl::StrFormat("%s[%d] = %d is out of range: token ids must be in [0, %d)",
                                     field, i, ids[i], vocab_size));
    }
  }
  return absl::OkStatus();
}

absl::Status CheckPriority(int32_t priority) {
  if (priority < -kMaxPriority || priority > kMaxPriority) {
    return Invalid(absl::StrFormat("priority = %d is out of range [%d, %d]", priority,
                                   -kMaxPriority, kMaxPriority));
  }
  return absl::OkStatus();
}

absl::Status CheckTopLogprobs(int32_t top_logprobs, const std::string& field,
                              const RequestLimits& limits) {
  if (top_logprobs < 0 || top_logprobs > limits.max_top_logprobs) {
    return Invalid(absl::StrFormat("%s = %d is out of range [0, %d]", field, top_logprobs,
                                   limits.max_top_logprobs));
  }
  return absl::OkStatus();
}

absl::Status CheckSampling(const v1::SamplingParams& s) {
  if (s.has_temperature() && !InClosed(s.temperature(), 0.0, kMaxTemperature)) {
    return Invalid(absl::StrFormat("sampling.temperature = %g is out of range [0, %g]",
                                   s.temperature(), kMaxTemperature));
  }
  if (s.top_k() < 0) {
    return Invalid(absl::StrFormat("sampling.top_k = %d must be >= 0 (0 disables it)", s.top_k()));
  }
  if (s.has_top_p() && !(s.top_p() > 0.0f && s.top_p() <= 1.0f)) {
    return Invalid(absl::StrFormat("sampling.top_p = %g is out of range (0, 1]", s.top_p()));
  }
  if (!InClosed(s.min_p(), 0.0, 1.0)) {
    return Invalid(absl::StrFormat("sampling.min_p = %g is out of range [0, 1]", s.min_p()));
  }
  return absl::OkStatus();
}

absl::Status CheckPenalties(const v1::Penalties& p) {
  if (p.has_repetition_penalty() &&
      !(p.repetition_penalty() > 0.0f && p.repetition_penalty() <= kMaxRepetitionPenalty)) {
    return Invalid(absl::StrFormat("penalties.repetition_penalty = %g is out of range (0, %g]",
                                   p.repetition_penalty(), kMaxRepetitionPenalty));
  }
  if (!InClosed(p.presence_penalty(), -kMaxAbsPenalty, kMaxAbsPenalty)) {
    return Invalid(absl::StrFormat("penalties.presence_penalty = %g is out of range [%g, %g]",
                                   p.presence_penalty(), -kMaxAbsPenalty, kMaxAbsPenalty));
  }
  if (!InClosed(p.frequency_penalty(), -kMaxAbsPenalty, kMaxAbsPenalty)) {
    return Invalid(absl::StrFormat("penalties.frequency_penalty = %g is out of range [%g, %g]",
                                   p.frequency_penalty(), -kMaxAbsPenalty, kMaxAbsPenalty));
  }
  return absl::OkStatus();
}

absl::Status CheckStopping(const v1::Stopping& s, const RequestLimits& limits) {
  if (s.has_max_new_tokens() &&
      (s.max_new_tokens() < 1 || s.max_new_tokens() > limits.max_new_tokens)) {
    return Invalid(absl::StrFormat("stopping.max_new_tokens = %d is out of range [1, %d]",
                                   s.max_new_tokens(), limits.max_new_tokens));
  }
  const int32_t max_new =
      s.has_max_new_tokens() ? s.max_new_tokens() : limits.default_max_new_tokens;
  if (s.min_new_tokens() < 0 || s.min_new_tokens() > max_new) {
    return Invalid(
        absl::StrFormat("stopping.min_new_tokens = %d is out of range [0, max_new_tokens = %d]",
                        s.min_new_tokens(), max_new));
  }
  if (s.stop_strings_size() > limits.max_stop_strings) {
    return Invalid(absl::StrFormat("stopping.stop_strings has %d entries; at most %d are allowed",
                                   s.stop_strings_size(), limits.max_stop_strings));
  }
  for (int i = 0; i < s.stop_strings_size(); ++i) {
    const std::string& stop = s.stop_strings(i);
    if (stop.empty()) return Invalid(absl::StrFormat("stopping.stop_strings[%d] is empty", i));
    if (static_cast<int64_t>(stop.size()) > limits.max_stop_string_bytes) {
      return Invalid(absl::StrFormat("stopping.stop_strings[%d] has %d bytes; at most %d allowed",
                                     i, stop.size(), limits.max_stop_string_bytes));
    }
  }
  if (s.stop_token_ids_size() > kMaxStopTokenIds) {
    return Invalid(absl::StrFormat("stopping.stop_token_ids has %d entries; at most %d allowed",
                                   s.stop_token_ids_size(), kMaxStopTokenIds));
  }
  return CheckTokenIds(s.stop_token_ids(), "stopping.stop_token_ids", limits.vocab_size);
}

// The byte bound of text prompts: refused before tokenizing, so that the cost of a request is
// bounded before any work is done on it.
absl::Status CheckPromptBytes(size_t bytes, const std::string& field, const RequestLimits& limits) {
  if (limits.max_prompt_bytes <= 0 || static_cast<int64_t>(bytes) <= limits.max_prompt_bytes) {
    return absl::OkStatus();
  }
  return Invalid(absl::StrFormat(
      "%s has %d bytes; at most %d are allowed: limits.max_prompt_tokens (%d) x %d bytes, the "
      "longest token of this model's tokenizer, is the most text that fits in the token limit",
      field, bytes, limits.max_prompt_bytes, limits.max_prompt_tokens, limits.max_piece_bytes));
}

std::string ScorePromptTooLong(const std::string& field, size_t tokens,
                               const RequestLimits& limits) {
  return absl::StrFormat("%s has %d tokens; at most %d are allowed (limits.max_prompt_tokens)",
                         field, tokens, limits.max_prompt_tokens);
}

}  // namespace

absl::Status ValidateRequestId(const std::string& request_id) {
  if (request_id.size() > kMaxRequestIdBytes) {
    return Invalid(absl::StrFormat("request_id has %d bytes; at most %d are allowed",
                                   request_id.size(), kMaxRequestIdBytes));
  }
  for (char c : request_id) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '.' || c == '_' || c == ':' || c == '-';
    if (!ok) {
      return Invalid("request_id may only contain the characters [A-Za-z0-9._:-]");
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateGenerateRequest(const v1::GenerateRequest& request,
                                     const RequestLimits& limits) {
  switch (request.prompt_case()) {
    case v1::GenerateRequest::kText:
      if (request.text().empty()) return Invalid("text (the prompt) must not be empty");
      if (absl::Status s = CheckPromptBytes(request.text().size(), "text", limits); !s.ok()) {
        return s;
      }
      break;
    case v1::GenerateRequest::kTokenIds:
      if (request.token_ids().ids().empty()) {
        return Invalid("token_ids.ids (the prompt) must not be empty");
      }
      if (absl::Status s =
              CheckTokenIds(request.token_ids().ids(), "token_ids.ids", limits.vocab_size);
          !s.ok()) {
        return s;
      }
      break;
    default:
      return Invalid("prompt: exactly one of text or token_ids must be set");
  }
  return ValidateGenerationOptions(request, limits);
}

absl::Status ValidateGenerationOptions(const v1::GenerateRequest& request,
                                       const RequestLimits& limits) {
  if (absl::Status s = CheckSampling(request.sampling()); !s.ok()) return s;
  if (absl::Status s = CheckPenalties(request.penalties()); !s.ok()) return s;
  if (absl::Status s = CheckStopping(request.stopping(), limits); !s.ok()) return s;
  if (absl::Status s =
          CheckTopLogprobs(request.response().top_logprobs(), "response.top_logprobs", limits);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = ValidateRequestId(request.request_id()); !s.ok()) return s;
  return CheckPriority(request.priority());
}

absl::StatusOr<GenerateRequest> MakeEngineRequest(const v1::GenerateRequest& request,
                                                  const Tokenizer* tokenizer,
                                                  const RequestLimits& limits,
                                                  std::string engine_id) {
  if (absl::Status s = ValidateGenerateRequest(request, limits); !s.ok()) return s;
  GenerateRequest out;
  out.request_id = std::move(engine_id);
  std::string prompt_field;
  if (request.prompt_case() == v1::GenerateRequest::kText) {
    if (tokenizer == nullptr) return absl::InternalError("no tokenizer for a text prompt");
    const bool add_bos = !request.has_add_bos() || request.add_bos();
    out.prompt_tokens = tokenizer->Encode(request.text(), add_bos);
    prompt_field = "text";
  } else {
    out.prompt_tokens.assign(request.token_ids().ids().begin(), request.token_ids().ids().end());
    prompt_field = "token_ids.ids";
  }
  const int64_t prompt_len = static_cast<int64_t>(out.prompt_tokens.size());
  if (prompt_len == 0) return Invalid(absl::StrCat(prompt_field, " tokenizes to no tokens"));
  if (prompt_len > limits.max_prompt_tokens) {
    return Invalid(
        absl::StrFormat("%s has %d tokens; at most %d are allowed (limits.max_prompt_tokens)",
                        prompt_field, prompt_len, limits.max_prompt_tokens));
  }
  const int64_t room = limits.max_context_tokens - prompt_len;
  const v1::Stopping& stopping = request.stopping();
  if (stopping.has_max_new_tokens()) {
    if (stopping.max_new_tokens() > room) {
      return Invalid(absl::StrFormat(
          "stopping.max_new_tokens = %d does not fit: the prompt has %d tokens and the context "
          "holds %d (max_new_tokens must be in [1, %d] for this prompt)",
          stopping.max_new_tokens(), prompt_len, limits.max_context_tokens, room));
    }
    out.stopping.max_new_tokens = stopping.max_new_tokens();
  } else {
    if (room < 1) {
      return Invalid(absl::StrFormat(
          "%s has %d tokens and fills the context (%d tokens): nothing can be generated",
          prompt_field, prompt_len, limits.max_context_tokens));
    }
    out.stopping.max_new_tokens =
        static_cast<int32_t>(std::min<int64_t>(limits.default_max_new_tokens, room));
  }
  out.stopping.min_new_tokens = std::min(stopping.min_new_tokens(), out.stopping.max_new_tokens);
  out.stopping.stop_strings.assign(stopping.stop_strings().begin(), stopping.stop_strings().end());
  out.stopping.stop_token_ids.assign(stopping.stop_token_ids().begin(),
                                     stopping.stop_token_ids().end());
  out.stopping.ignore_eos = stopping.ignore_eos();

  const v1::SamplingParams& sampling = request.sampling();
  out.sampling.temperature = sampling.has_temperature() ? sampling.temperature() : 1.0f;
  out.sampling.top_k = sampling.top_k();
  out.sampling.top_p = sampling.has_top_p() ? sampling.top_p() : 1.0f;
  out.sampling.min_p = sampling.min_p();
  if (sampling.has_seed()) out.sampling.seed = sampling.seed();
  const v1::Penalties& penalties = request.penalties();
  out.sampling.repetition_penalty =
      penalties.has_repetition_penalty() ? penalties.repetition_penalty() : 1.0f;
  out.sampling.presence_penalty = penalties.presence_penalty();
  out.sampling.frequency_penalty = penalties.frequency_penalty();

  out.top_logprobs = request.response().top_logprobs();
  out.logprobs = request.response().logprobs() || out.top_logprobs > 0;
  out.priority = request.priority();
  return out;
}

absl::Status ValidateScoreRequest(const v1::ScoreRequest& request, const RequestLimits& limits) {
  switch (request.input_case()) {
    case v1::ScoreRequest::kText:
      if (request.text().empty()) return Invalid("text (to score) must not be empty");
      if (absl::Status s = CheckPromptBytes(request.text().size(), "text", limits); !s.ok()) {
        return s;
      }
      break;
    case v1::ScoreRequest::kTokenIds:
      if (request.token_ids().ids_size() < 2) {
        return Invalid(absl::StrFormat(
            "token_ids.ids has %d ids; scoring needs at least 2 (each is scored given those "
            "before it)",
            request.token_ids().ids_size()));
      }
      if (absl::Status s =
              CheckTokenIds(request.token_ids().ids(), "token_ids.ids", limits.vocab_size);
          !s.ok()) {
        return s;
      }
      break;
    case v1::ScoreRequest::kPairs: {
      const auto& pairs = request.pairs().pairs();
      if (pairs.empty() || pairs.size() > limits.max_score_pairs) {
        return Invalid(absl::StrFormat("pairs.pairs has %d entries; it must have 1 to %d",
                                       pairs.size(), limits.max_score_pairs));
      }
      for (int i = 0; i < pairs.size(); ++i) {
        if (pairs[i].continuation().empty()) {
          return Invalid(absl::StrFormat("pairs.pairs[%d].continuation must not be empty", i));
        }
        if (absl::Status s = CheckPromptBytes(
                pairs[i].context().size() + pairs[i].continuation().size(),
                absl::StrFormat("pairs.pairs[%d] (context + continuation)", i), limits);
            !s.ok()) {
          return s;
        }
      }
      break;
    }
    default:
      return Invalid("input: exactly one of text, token_ids or pairs must be set");
  }
  if (absl::Status s = CheckTopLogprobs(request.top_logprobs(), "top_logprobs", limits); !s.ok()) {
    return s;
  }
  if (absl::Status s = ValidateRequestId(request.request_id()); !s.ok()) return s;
  return CheckPriority(request.priority());
}

absl::StatusOr<std::vector<ScoreSequence>> MakeScoreSequences(const v1::ScoreRequest& request,
                                                              const Tokenizer* tokenizer,
                                                              const RequestLimits& limits) {
  if (absl::Status s = ValidateScoreRequest(request, limits); !s.ok()) return s;
  const bool add_bos = !request.has_add_bos() || request.add_bos();
  std::vector<ScoreSequence> sequences;
  if (request.input_case() != v1::ScoreRequest::kTokenIds && tokenizer == nullptr) {
    return absl::InternalError("no tokenizer for a text score request");
  }
  switch (request.input_case()) {
    case v1::ScoreRequest::kText: {
      ScoreSequence seq;
      seq.tokens = tokenizer->Encode(request.text(), add_bos);
      if (seq.tokens.size() < 2) {
        return Invalid(absl::StrFormat(
            "text tokenizes to %d token(s)%s; scoring needs at least 2 (use add_bos or a longer "
            "text)",
            seq.tokens.size(), add_bos ? " including bos" : ""));
      }
      seq.num_context_tokens = 1;
      sequences.push_back(std::move(seq));
      break;
    }
    case v1::ScoreRequest::kTokenIds: {
      ScoreSequence seq;
      seq.tokens.assign(request.token_ids().ids().begin(), request.token_ids().ids().end());
      seq.num_context_tokens = 1;
      sequences.push_back(std::move(seq));
      break;
    }
    default: {
      const auto& pairs = request.pairs().pairs();
      for (int i = 0; i < pairs.size(); ++i) {
        // lm-evaluation-harness's _encode_pair: trailing whitespace of the context moves to the
        // continuation, the whole string is tokenized once, and the continuation is what follows
        // the context's own token count. Tokenizing the continuation alone would give it a
        // spurious word-boundary piece and score different tokens than the harness does.
        std::string context = pairs[i].context();
        std::string continuation = pairs[i].continuation();
        const size_t kept = context.find_last_not_of(" \t\n\r\f\v");
        const size_t context_len = kept == std::string::npos ? 0 : kept + 1;
        continuation.insert(0, context, context_len, std::string::npos);
        context.resize(context_len);
        ScoreSequence seq;
        std::vector<int32_t> context_tokens;
        if (!context.empty() || add_bos) context_tokens = tokenizer->Encode(context, add_bos);
        // An empty context without bos encodes to nothing.
        if (context.empty() && !add_bos) context_tokens.clear();
        seq.num_context_tokens = static_cast<int32_t>(context_tokens.size());
        if (seq.num_context_tokens == 0) {
          // add_bos is true here only for a model whose tokenizer adds no BOS (e.g. SmolLM2).
          return Invalid(absl::StrFormat(
              "pairs.pairs[%d].context is empty and %s: the first continuation token would have "
              "nothing to be scored against",
              i, add_bos ? "this model's tokenizer adds no BOS token" : "add_bos is false"));
        }
        seq.tokens = tokenizer->Encode(context + continuation, add_bos);
        if (static_cast<int32_t>(seq.tokens.size()) <= seq.num_context_tokens) {
          return Invalid(absl::StrFormat("pairs.pairs[%d].continuation tokenizes to no tokens", i));
        }
        sequences.push_back(std::move(seq));
      }
    }
  }
  for (size_t i = 0; i < sequences.size(); ++i) {
    if (static_cast<int64_t>(sequences[i].tokens.size()) > limits.max_prompt_tokens) {
      const std::string field =
          request.input_case() == v1::ScoreRequest::kPairs
              ? absl::StrFormat("pairs.pairs[%d] (context + continuation)", i)
              : (request.input_case() == v1::ScoreRequest::kText ? "text" : "token_ids.ids");
      return Invalid(ScorePromptTooLong(field, sequences[i].tokens.size(), limits));
    }
  }
  return sequences;
}

GenerateRequest MakeScoreEngineRequest(const ScoreSequence& sequence, int32_t top_logprobs,
                                       int32_t priority, std::string engine_id) {
  GenerateRequest out;
  out.request_id = std::move(engine_id);
  out.prompt_tokens = sequence.tokens;
  out.stopping.max_new_tokens = 0;
  out.prompt_logprobs = true;
  out.top_logprobs = top_logprobs;
  out.sampling.temperature = 0.0f;
  out.priority = priority;
  return out;
}

v1::FinishReason ToProtoFinishReason(FinishReason reason) {
  switch (reason) {
    case FinishReason::kNone:
      return v1::FINISH_REASON_UNSPECIFIED;
    case FinishReason::kLength:
      return v1::FINISH_REASON_LENGTH;
    case FinishReason::kEos:
      return v1::FINISH_REASON_EOS_TOKEN;
    case FinishReason::kStopToken:
      return v1::FINISH_REASON_STOP_TOKEN;
    case FinishReason::kStopString:
      return v1::FINISH_REASON_STOP_STRING;
    case FinishReason::kCancelled:
      return v1::FINISH_REASON_CANCELLED;
    case FinishReason::kDeadline:
      return v1::FINISH_REASON_DEADLINE_EXCEEDED;
    case FinishReason::kError:
      return v1::FINISH_REASON_ERROR;
  }
  return v1::FINISH_REASON_ERROR;
}

void FillTokenLogprob(const TokenLogprob& logprob, const Tokenizer* tokenizer,
                      v1::TokenLogprob* out) {
  out->set_token_id(logprob.token_id);
  if (tokenizer != nullptr) out->set_piece(tokenizer->IdToPiece(logprob.token_id));
  out->set_logprob(logprob.logprob);
  out->set_is_greedy(logprob.is_greedy);
  for (const TopLogprob& top : logprob.top) {
    v1::TopLogprob* t = out->add_top_logprobs();
    t->set_token_id(top.token_id);
    if (tokenizer != nullptr) t->set_piece(tokenizer->IdToPiece(top.token_id));
    t->set_logprob(top.logprob);
  }
}

ResponseShape ResponseShapeOf(const v1::GenerateRequest& request) {
  ResponseShape shape;
  shape.token_ids = request.response().return_token_ids();
  shape.logprobs = request.response().logprobs() || request.response().top_logprobs() > 0;
  return shape;
}

void AppendChunk(const OutputChunk& chunk, const ResponseShape& shape, const Tokenizer* tokenizer,
                 v1::GenerateResponse* out) {
  out->mutable_text()->append(chunk.text);
  if (shape.token_ids) {
    out->mutable_token_ids()->Add(chunk.token_ids.begin(), chunk.token_ids.end());
  }
  if (shape.logprobs) {
    for (const TokenLogprob& logprob : chunk.logprobs) {
      FillTokenLogprob(logprob, tokenizer, out->add_logprobs());
    }
  }
  if (!chunk.finished) return;
  out->set_finish_reason(ToProtoFinishReason(chunk.finish_reason));
  if (chunk.finish_reason == FinishReason::kStopString) out->set_stop_string(chunk.stop_string);
  if ((chunk.finish_reason == FinishReason::kEos ||
       chunk.finish_reason == FinishReason::kStopToken) &&
      chunk.stop_token_id >= 0) {
    out->set_stop_token_id(chunk.stop_token_id);
  }
  out->mutable_usage()->set_prompt_tokens(chunk.usage.prompt_tokens);
  out->mutable_usage()->set_completion_tokens(chunk.usage.completion_tokens);
  out->mutable_usage()->set_cached_prompt_tokens(chunk.usage.cached_prompt_tokens);
}

}  // namespace spqr
