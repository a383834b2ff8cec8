// libFuzzer target for what the server does with a request's raw bytes before any model work:
// ParseRequestBytes (the diagnosis walker included), the field checks and conversion of
// request_validation (token id prompts; text needs the model's tokenizer), and LogSafe. The first
// input byte picks the message type. Every input must end in OK or INVALID_ARGUMENT; refusal
// messages and LogSafe output must be printable ASCII (client bytes never quoted raw), and an
// accepted request must respect the limits it was checked against.
//
// Build (clang only): configure with -DSPQR_FUZZ=ON -DCMAKE_CXX_COMPILER=clang++, then build the
// target request_fuzz. Run it with a scratch corpus directory first and tests/fuzz/corpus/request.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "absl/strings/string_view.h"
#include "server/log.h"
#include "server/request_parsing.h"
#include "server/request_validation.h"
#include "spqr/v1/spqr.pb.h"

namespace {

spqr::RequestLimits Limits() {
  spqr::RequestLimits limits;
  limits.vocab_size = 512;
  limits.max_context_tokens = 256;
  limits.max_prompt_tokens = 200;
  limits.max_new_tokens = 128;
  limits.default_max_new_tokens = 16;
  limits.max_stop_strings = 4;
  limits.max_stop_string_bytes = 32;
  limits.max_top_logprobs = 5;
  limits.max_score_pairs = 4;
  limits.max_piece_bytes = 8;
  limits.max_prompt_bytes = 200 * 8;
  return limits;
}

void CheckPrintable(absl::string_view text) {
  for (char c : text) {
    const auto byte = static_cast<unsigned char>(c);
    if (byte < 0x20 || byte >= 0x7f) std::abort();
  }
}

// A refusal is INVALID_ARGUMENT with a printable message; anything else is a bug.
void CheckRefusal(const absl::Status& status) {
  if (status.ok()) return;
  if (status.code() != absl::StatusCode::kInvalidArgument || status.message().empty()) {
    std::abort();
  }
  CheckPrintable(status.message());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const absl::string_view bytes(reinterpret_cast<const char*>(data) + 1, size - 1);
  const spqr::RequestLimits limits = Limits();
  CheckPrintable(spqr::LogSafe(bytes));
  if (spqr::LogSafe(bytes).size() > 4 * spqr::kLogClientStringBytes + 32) std::abort();
  switch (data[0] % 3) {
    case 0: {
      spqr::v1::GenerateRequest request;
      const absl::Status parsed = spqr::ParseRequestBytes(bytes, &request);
      CheckRefusal(parsed);
      if (!parsed.ok()) return 0;
      const absl::Status valid = spqr::ValidateGenerateRequest(request, limits);
      CheckRefusal(valid);
      if (!valid.ok() || request.prompt_case() != spqr::v1::GenerateRequest::kTokenIds) return 0;
      auto converted = spqr::MakeEngineRequest(request, nullptr, limits, "fuzz");
      CheckRefusal(converted.status());
      if (!converted.ok()) return 0;
      const int64_t prompt = static_cast<int64_t>(converted->prompt_tokens.size());
      if (prompt < 1 || prompt > limits.max_prompt_tokens) std::abort();
      const int32_t max_new = converted->stopping.max_new_tokens;
      if (max_new < 1 || prompt + max_new > limits.max_context_tokens) std::abort();
      for (int32_t id : converted->prompt_tokens) {
        if (id < 0 || id >= limits.vocab_size) std::abort();
      }
      return 0;
    }
    case 1: {
      spqr::v1::ScoreRequest request;
      const absl::Status parsed = spqr::ParseRequestBytes(bytes, &request);
      CheckRefusal(parsed);
      if (!parsed.ok()) return 0;
      CheckRefusal(spqr::ValidateScoreRequest(request, limits));
      if (request.input_case() != spqr::v1::ScoreRequest::kTokenIds) return 0;
      auto sequences = spqr::MakeScoreSequences(request, nullptr, limits);
      CheckRefusal(sequences.status());
      if (!sequences.ok()) return 0;
      for (const spqr::ScoreSequence& seq : *sequences) {
        if (seq.tokens.size() < 2 ||
            static_cast<int64_t>(seq.tokens.size()) > limits.max_prompt_tokens) {
          std::abort();
        }
      }
      return 0;
    }
    default: {
      spqr::v1::AbortRequest request;
      CheckRefusal(spqr::ParseRequestBytes(bytes, &request));
      return 0;
    }
  }
}
