// Tests of server/request_validation: request field checks (INVALID_ARGUMENT naming the field),
// default resolution and conversion to engine requests. Token id prompts need no tokenizer.
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/request_validation.h"

namespace spqr {
namespace {

using ::testing::HasSubstr;

RequestLimits Limits() {
  RequestLimits limits;
  limits.vocab_size = 100;
  limits.max_context_tokens = 64;
  limits.max_prompt_tokens = 48;
  limits.max_new_tokens = 32;
  limits.default_max_new_tokens = 20;
  limits.max_stop_strings = 2;
  limits.max_stop_string_bytes = 8;
  limits.max_top_logprobs = 5;
  limits.max_score_pairs = 3;
  return limits;
}

v1::GenerateRequest Prompt(std::vector<int32_t> ids) {
  v1::GenerateRequest request;
  for (int32_t id : ids) request.mutable_token_ids()->add_ids(id);
  return request;
}

absl::Status Convert(const v1::GenerateRequest& request) {
  return MakeEngineRequest(request, nullptr, Limits(), "r1").status();
}

TEST(GenerateValidationTest, DefaultsAreResolved) {
  absl::StatusOr<GenerateRequest> out =
      MakeEngineRequest(Prompt({1, 2, 3}), nullptr, Limits(), "r7");
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->request_id, "r7");
  EXPECT_EQ(out->prompt_tokens, (std::vector<int32_t>{1, 2, 3}));
  EXPECT_EQ(out->sampling.temperature, 1.0f);
  EXPECT_EQ(out->sampling.top_p, 1.0f);
  EXPECT_EQ(out->sampling.top_k, 0);
  EXPECT_EQ(out->sampling.repetition_penalty, 1.0f);
  EXPECT_FALSE(out->sampling.seed.has_value());
  EXPECT_EQ(out->stopping.max_new_tokens, 20);
  EXPECT_FALSE(out->logprobs);
}

TEST(GenerateValidationTest, DefaultMaxNewTokensShrinksToTheContext) {
  std::vector<int32_t> ids(48, 5);  // 64 - 48 = 16 < default 20
  absl::StatusOr<GenerateRequest> out = MakeEngineRequest(Prompt(ids), nullptr, Limits(), "r");
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->stopping.max_new_tokens, 16);
}

TEST(GenerateValidationTest, ExplicitFieldsAreCopied) {
  v1::GenerateRequest request = Prompt({4});
  request.mutable_sampling()->set_temperature(0.0f);
  request.mutable_sampling()->set_top_k(7);
  request.mutable_sampling()->set_top_p(0.5f);
  request.mutable_sampling()->set_min_p(0.1f);
  request.mutable_sampling()->set_seed(99);
  request.mutable_penalties()->set_repetition_penalty(1.2f);
  request.mutable_penalties()->set_presence_penalty(0.5f);
  request.mutable_penalties()->set_frequency_penalty(-0.5f);
  request.mutable_stopping()->set_max_new_tokens(30);
  request.mutable_stopping()->set_min_new_tokens(3);
  request.mutable_stopping()->add_stop_strings("\n\n");
  request.mutable_stopping()->add_stop_token_ids(9);
  request.mutable_stopping()->set_ignore_eos(true);
  request.mutable_response()->set_top_logprobs(2);
  request.set_priority(5);
  absl::StatusOr<GenerateRequest> out = MakeEngineRequest(request, nullptr, Limits(), "r");
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->sampling.temperature, 0.0f);
  EXPECT_EQ(out->sampling.top_k, 7);
  EXPECT_EQ(out->sampling.top_p, 0.5f);
  EXPECT_FLOAT_EQ(out->sampling.min_p, 0.1f);
  EXPECT_EQ(out->sampling.seed, 99u);
  EXPECT_FLOAT_EQ(out->sampling.repetition_penalty, 1.2f);
  EXPECT_FLOAT_EQ(out->sampling.presence_penalty, 0.5f);
  EXPECT_FLOAT_EQ(out->sampling.frequency_penalty, -0.5f);
  EXPECT_EQ(out->stopping.max_new_tokens, 30);
  EXPECT_EQ(out->stopping.min_new_tokens, 3);
  EXPECT_EQ(out->stopping.stop_strings, (std::vector<std::string>{"\n\n"}));
  EXPECT_EQ(out->stopping.stop_token_ids, (std::vector<int32_t>{9}));
  EXPECT_TRUE(out->stopping.ignore_eos);
  EXPECT_TRUE(out->logprobs);  // top_logprobs implies logprobs
  EXPECT_EQ(out->top_logprobs, 2);
  EXPECT_EQ(out->priority, 5);
}

struct InvalidCase {
  std::function<void(v1::GenerateRequest*)> mutate;
  std::string field;
};

TEST(GenerateValidationTest, OutOfRangeFieldsAreNamed) {
  const std::vector<InvalidCase> cases = {
      {[](auto* r) { r->clear_token_ids(); }, "prompt"},
      {[](auto* r) { r->set_text(""); }, "text"},
      {[](auto* r) { r->mutable_token_ids()->set_ids(0, 100); }, "token_ids.ids[0] = 100"},
      {[](auto* r) { r->mutable_sampling()->set_temperature(-1); }, "sampling.temperature"},
      {[](auto* r) { r->mutable_sampling()->set_temperature(NAN); }, "sampling.temperature"},
      {[](auto* r) { r->mutable_sampling()->set_top_k(-2); }, "sampling.top_k"},
      {[](auto* r) { r->mutable_sampling()->set_top_p(0); },
       "sampling.top_p = 0 is out of range (0, 1]"},
      {[](auto* r) { r->mutable_sampling()->set_min_p(-0.1f); }, "sampling.min_p"},
      {[](auto* r) { r->mutable_penalties()->set_repetition_penalty(-1); },
       "penalties.repetition_penalty"},
      {[](auto* r) { r->mutable_penalties()->set_presence_penalty(2.1f); },
       "penalties.presence_penalty"},
      {[](auto* r) { r->mutable_penalties()->set_frequency_penalty(NAN); },
       "penalties.frequency_penalty"},
      {[](auto* r) { r->mutable_stopping()->set_max_new_tokens(0); },
       "stopping.max_new_tokens = 0 is out of range [1, 32]"},
      {[](auto* r) { r->mutable_stopping()->set_max_new_tokens(33); }, "stopping.max_new_tokens"},
      {[](auto* r) { r->mutable_stopping()->set_min_new_tokens(21); }, "stopping.min_new_tokens"},
      {[](auto* r) { r->mutable_stopping()->add_stop_strings(""); }, "stopping.stop_strings[0]"},
      {[](auto* r) { r->mutable_stopping()->add_stop_strings("123456789"); },
       "stopping.stop_strings[0] has 9 bytes"},
      {[](auto* r) {
         for (int i = 0; i < 3; ++i) r->mutable_stopping()->add_stop_strings("a");
       },
       "stopping.stop_strings has 3 entries"},
      {[](auto* r) { r->mutable_stopping()->add_stop_token_ids(-1); },
       "stopping.stop_token_ids[0]"},
      {[](auto* r) { r->mutable_response()->set_top_logprobs(6); }, "response.top_logprobs"},
      {[](auto* r) { r->set_request_id("a/b"); }, "request_id"},
      {[](auto* r) { r->set_priority(-1001); }, "priority"},
  };
  for (const InvalidCase& c : cases) {
    v1::GenerateRequest request = Prompt({1, 2});
    c.mutate(&request);
    absl::Status status = Convert(request);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << c.field;
    EXPECT_THAT(status.message(), HasSubstr(c.field));
  }
}

TEST(GenerateValidationTest, PromptLengthAndContextFit) {
  absl::Status status = Convert(Prompt(std::vector<int32_t>(49, 1)));
  EXPECT_THAT(status.message(), HasSubstr("token_ids.ids has 49 tokens; at most 48"));
  v1::GenerateRequest request = Prompt(std::vector<int32_t>(40, 1));
  request.mutable_stopping()->set_max_new_tokens(25);  // 40 + 25 > 64
  status = Convert(request);
  EXPECT_THAT(status.message(), HasSubstr("stopping.max_new_tokens = 25 does not fit"));
  EXPECT_THAT(status.message(), HasSubstr("[1, 24]"));
}

TEST(ScoreValidationTest, TokenIdsBecomeOneSequence) {
  v1::ScoreRequest request;
  for (int32_t id : {1, 5, 6}) request.mutable_token_ids()->add_ids(id);
  absl::StatusOr<std::vector<ScoreSequence>> sequences =
      MakeScoreSequences(request, nullptr, Limits());
  ASSERT_TRUE(sequences.ok()) << sequences.status();
  ASSERT_EQ(sequences->size(), 1u);
  EXPECT_EQ((*sequences)[0].tokens, (std::vector<int32_t>{1, 5, 6}));
  EXPECT_EQ((*sequences)[0].num_context_tokens, 1);
  GenerateRequest engine = MakeScoreEngineRequest((*sequences)[0], 2, 0, "s1");
  EXPECT_EQ(engine.stopping.max_new_tokens, 0);
  EXPECT_TRUE(engine.prompt_logprobs);
  EXPECT_EQ(engine.top_logprobs, 2);
}

TEST(ScoreValidationTest, FieldsAreNamed) {
  v1::ScoreRequest empty;
  EXPECT_THAT(ValidateScoreRequest(empty, Limits()).message(), HasSubstr("input"));
  v1::ScoreRequest one;
  one.mutable_token_ids()->add_ids(1);
  EXPECT_THAT(ValidateScoreRequest(one, Limits()).message(), HasSubstr("at least 2"));
  v1::ScoreRequest pairs;
  for (int i = 0; i < 4; ++i) pairs.mutable_pairs()->add_pairs()->set_continuation("x");
  EXPECT_THAT(ValidateScoreRequest(pairs, Limits()).message(),
              HasSubstr("pairs.pairs has 4 entries; it must have 1 to 3"));
  v1::ScoreRequest no_continuation;
  no_continuation.mutable_pairs()->add_pairs()->set_context("c");
  EXPECT_THAT(ValidateScoreRequest(no_continuation, Limits()).message(),
              HasSubstr("pairs.pairs[0].continuation"));
  v1::ScoreRequest long_ids;
  for (int i = 0; i < 49; ++i) long_ids.mutable_token_ids()->add_ids(1);
  EXPECT_THAT(MakeScoreSequences(long_ids, nullptr, Limits()).status().message(),
              HasSubstr("limits.max_prompt_tokens"));
}

TEST(ResponseTest, FinalChunkCarriesFinishReasonStopAndUsage) {
  OutputChunk chunk;
  chunk.text = "abc";
  chunk.token_ids = {4, 5};
  chunk.logprobs = {{4, -0.5f, true, {{4, -0.5f}, {6, -1.0f}}}, {5, -0.25f, false, {}}};
  chunk.finished = true;
  chunk.finish_reason = FinishReason::kStopToken;
  chunk.stop_token_id = 5;
  chunk.usage = {3, 2, 1};
  v1::GenerateResponse response;
  AppendChunk(chunk, ResponseShape{true, true}, nullptr, &response);
  EXPECT_EQ(response.text(), "abc");
  EXPECT_THAT(response.token_ids(), ::testing::ElementsAre(4, 5));
  ASSERT_EQ(response.logprobs_size(), 2);
  EXPECT_EQ(response.logprobs(0).top_logprobs_size(), 2);
  EXPECT_TRUE(response.logprobs(0).is_greedy());
  EXPECT_EQ(response.finish_reason(), v1::FINISH_REASON_STOP_TOKEN);
  EXPECT_EQ(response.stop_token_id(), 5);
  EXPECT_FALSE(response.has_stop_string());
  EXPECT_EQ(response.usage().prompt_tokens(), 3);
  EXPECT_EQ(response.usage().completion_tokens(), 2);
  EXPECT_EQ(response.usage().cached_prompt_tokens(), 1);

  v1::GenerateResponse text_only;
  chunk.finished = false;
  AppendChunk(chunk, ResponseShape{}, nullptr, &text_only);
  EXPECT_EQ(text_only.token_ids_size(), 0);
  EXPECT_EQ(text_only.logprobs_size(), 0);
  EXPECT_EQ(text_only.finish_reason(), v1::FINISH_REASON_UNSPECIFIED);
}

// Text prompts are refused on their byte length before any tokenizer runs (the tokenizer is null
// here: reaching it would fail differently), with the bound and where it comes from in the message.
TEST(PromptByteBoundTest, LongTextsAreRefusedBeforeTokenizingStatingTheBound) {
  RequestLimits limits = Limits();
  limits.max_piece_bytes = 4;
  limits.max_prompt_bytes = int64_t{limits.max_prompt_tokens} * limits.max_piece_bytes;  // 192
  v1::GenerateRequest generate;
  generate.set_text(std::string(193, 'a'));
  absl::Status s = MakeEngineRequest(generate, nullptr, limits, "r").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("text has 193 bytes; at most 192 are allowed"));
  EXPECT_THAT(s.message(), HasSubstr("limits.max_prompt_tokens (48) x 4 bytes"));
  // At the bound the check passes (and the missing tokenizer is what fails).
  generate.set_text(std::string(192, 'a'));
  EXPECT_EQ(MakeEngineRequest(generate, nullptr, limits, "r").status().code(),
            absl::StatusCode::kInternal);

  v1::ScoreRequest score;
  score.set_text(std::string(1000, 'b'));
  s = ValidateScoreRequest(score, limits);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("text has 1000 bytes; at most 192"));

  v1::ScoreRequest pairs;
  v1::ContinuationPair* ok = pairs.mutable_pairs()->add_pairs();
  ok->set_context("a");
  ok->set_continuation(" b");
  v1::ContinuationPair* long_pair = pairs.mutable_pairs()->add_pairs();
  long_pair->set_context(std::string(100, 'c'));
  long_pair->set_continuation(std::string(93, 'd'));  // 193 together
  s = ValidateScoreRequest(pairs, limits);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("pairs.pairs[1] (context + continuation) has 193 bytes"));
}

}  // namespace
}  // namespace spqr
