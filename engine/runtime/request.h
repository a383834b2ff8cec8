// What a caller asks the engine for, and what the engine streams back. Plain structs: the server
// converts its protobuf messages to these and back.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"

namespace spqr {

struct SamplingParams {
  float temperature = 1.0f;         // 0 = greedy (argmax)
  int32_t top_k = 0;                // 0 = off
  float top_p = 1.0f;               // 1 = off
  float min_p = 0.0f;               // 0 = off; keep tokens with p >= min_p * p_max
  std::optional<uint64_t> seed;     // same seed + same request -> same tokens
  float repetition_penalty = 1.0f;  // CTRL-style, over prompt and generated tokens; 1 = off
  float presence_penalty = 0.0f;    // OpenAI-style, over generated tokens
  float frequency_penalty = 0.0f;   // OpenAI-style, over generated tokens
};

struct StoppingParams {
  int32_t max_new_tokens = 16;
  int32_t min_new_tokens = 0;  // eos, stop tokens and stop strings are ignored before this many
  std::vector<std::string> stop_strings;  // the matched string is not part of the output text
  std::vector<int32_t> stop_token_ids;    // the stop token is not part of the output text
  bool ignore_eos = false;
};

// A generation (or, with max_new_tokens = 0 and prompt_logprobs, a scoring) request.
struct GenerateRequest {
  std::string request_id;              // unique among live requests; used by Cancel()
  std::vector<int32_t> prompt_tokens;  // already tokenized (bos included if wanted)
  SamplingParams sampling;
  StoppingParams stopping;
  bool logprobs = false;         // logprob of each chosen token
  int32_t top_logprobs = 0;      // plus this many most likely alternatives per position
  bool prompt_logprobs = false;  // logprob and greedy flag of every prompt token after the first
  int32_t priority = 0;          // higher runs first (ties: arrival order)
  std::optional<absl::Time> deadline;  // the engine finishes the request with kDeadline after it
};

enum class FinishReason {
  kNone = 0,    // not finished
  kLength,      // max_new_tokens reached (or the context is full)
  kEos,         // the model emitted an end-of-sequence token
  kStopToken,   // one of stop_token_ids
  kStopString,  // one of stop_strings
  kCancelled,   // Cancel() or client disconnect
  kDeadline,    // the request's deadline passed
  kError,       // see OutputChunk::error
};
const char* FinishReasonName(FinishReason reason);

struct TopLogprob {
  int32_t token_id = 0;
  float logprob = 0.0f;
};

struct TokenLogprob {
  int32_t token_id = 0;
  float logprob = 0.0f;         // log-softmax of the raw logits (before sampling transforms)
  bool is_greedy = false;       // token_id is the argmax
  std::vector<TopLogprob> top;  // top_logprobs alternatives, most likely first
};

struct Usage {
  int32_t prompt_tokens = 0;
  int32_t completion_tokens = 0;
  int32_t cached_prompt_tokens = 0;  // prompt tokens served from the prefix cache
};

// Timings the engine measured for one request; filled on the final chunk.
struct RequestTimings {
  absl::Duration queue_time;           // submit -> first scheduled
  absl::Duration time_to_first_token;  // submit -> first generated token
  absl::Duration e2e;                  // submit -> finish
};

// A piece of a request's output. Chunks arrive in order; exactly one has finished = true, and it
// is the last.
struct OutputChunk {
  std::vector<int32_t> token_ids;             // newly generated tokens
  std::vector<TokenLogprob> logprobs;         // parallel to token_ids when logprobs was asked for
  std::string text;                           // newly completed UTF-8 text (stop strings held back)
  std::vector<TokenLogprob> prompt_logprobs;  // once, in the first chunk, when asked for
  bool finished = false;
  FinishReason finish_reason = FinishReason::kNone;
  std::string stop_string;     // which stop string matched (kStopString)
  int32_t stop_token_id = -1;  // which token stopped it (kEos / kStopToken)
  absl::Status error;          // set with kError
  Usage usage;                 // cumulative
  RequestTimings timings;      // on the final chunk
};

// Called on the engine thread for every chunk; must not block (hand the chunk to another thread).
using OutputCallback = std::function<void(OutputChunk)>;

}  // namespace spqr
