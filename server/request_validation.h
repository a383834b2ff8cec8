// Validation of spqr.v1 requests and conversion between spqr.v1 messages and engine structs.
//
// Every check returns INVALID_ARGUMENT with a message that names the field (as a path in the
// request, e.g. "sampling.top_p") and the allowed range, so clients can fix their request.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/runtime/request.h"
#include "engine/tokenizer/tokenizer.h"
#include "spqr/v1/spqr.pb.h"

namespace spqr {

// The limits requests are checked against: the config's limits resolved against the model.
struct RequestLimits {
  int32_t vocab_size = 0;
  int32_t max_context_tokens = 0;  // prompt + generated tokens
  int32_t max_prompt_tokens = 0;
  int32_t max_new_tokens = 0;
  int32_t default_max_new_tokens = 0;
  int32_t max_stop_strings = 0;
  int32_t max_stop_string_bytes = 0;
  int32_t max_top_logprobs = 0;
  int32_t max_score_pairs = 0;
  // Text prompts (and score texts, each pair's context + continuation) longer than this many bytes
  // are refused before tokenizing: max_prompt_tokens x the tokenizer's longest piece in bytes,
  // the most text that can fit in max_prompt_tokens tokens. 0: no byte bound.
  int64_t max_prompt_bytes = 0;
  int32_t max_piece_bytes = 0;  // the tokenizer's, for the error message
};

// Checks a request id: at most 128 bytes of [A-Za-z0-9._:-]; empty is allowed (server assigns).
absl::Status ValidateRequestId(const std::string& request_id);

// Field checks of a GenerateRequest that need no tokenizer.
absl::Status ValidateGenerateRequest(const v1::GenerateRequest& request,
                                     const RequestLimits& limits);

// The checks of ValidateGenerateRequest on everything but the prompt (sampling, penalties,
// stopping, response options, request id, priority).
absl::Status ValidateGenerationOptions(const v1::GenerateRequest& request,
                                       const RequestLimits& limits);

// Validates and converts a GenerateRequest into an engine request with id `engine_id`, tokenizing a
// text prompt with `tokenizer` (which may be null only for token id prompts) and resolving the
// defaults (max_new_tokens, temperature, top_p, repetition penalty). The gRPC deadline is set by
// the caller.
absl::StatusOr<GenerateRequest> MakeEngineRequest(const v1::GenerateRequest& request,
                                                  const Tokenizer* tokenizer,
                                                  const RequestLimits& limits,
                                                  std::string engine_id);

// Field checks of a ScoreRequest that need no tokenizer.
absl::Status ValidateScoreRequest(const v1::ScoreRequest& request, const RequestLimits& limits);

// One engine request of a Score call: the tokens to score and where the scored part starts.
struct ScoreSequence {
  std::vector<int32_t> tokens;
  int32_t num_context_tokens = 0;  // tokens before the scored part (1 for a whole text)
};

// Tokenizes a validated ScoreRequest: one sequence for text/token ids, one per pair otherwise.
// Checks that each sequence has something to score and fits in limits.max_prompt_tokens.
absl::StatusOr<std::vector<ScoreSequence>> MakeScoreSequences(const v1::ScoreRequest& request,
                                                              const Tokenizer* tokenizer,
                                                              const RequestLimits& limits);

// The engine request that scores one sequence (prompt logprobs, nothing generated).
GenerateRequest MakeScoreEngineRequest(const ScoreSequence& sequence, int32_t top_logprobs,
                                       int32_t priority, std::string engine_id);

v1::FinishReason ToProtoFinishReason(FinishReason reason);

// Fills a TokenLogprob message; pieces come from `tokenizer` when it is not null.
void FillTokenLogprob(const TokenLogprob& logprob, const Tokenizer* tokenizer,
                      v1::TokenLogprob* out);

// What a GenerateResponse carries besides text (from ResponseOptions).
struct ResponseShape {
  bool token_ids = false;
  bool logprobs = false;
};
ResponseShape ResponseShapeOf(const v1::GenerateRequest& request);

// Appends a chunk's text, token ids and logprobs to `out`; on the final chunk also sets the finish
// reason, what stopped generation and usage.
void AppendChunk(const OutputChunk& chunk, const ResponseShape& shape, const Tokenizer* tokenizer,
                 v1::GenerateResponse* out);

}  // namespace spqr
