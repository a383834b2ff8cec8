// Tests of the server's handling of raw client bytes: request parsing with a diagnosis naming the
// field (server/request_parsing), LogSafe (server/log), and the WorkPool that tokenizes requests.
#include <atomic>
#include <string>
#include <vector>

#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/log.h"
#include "server/request_parsing.h"
#include "server/work_pool.h"
#include "spqr/v1/spqr.pb.h"

namespace spqr {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

// `message` serialized, with the ASCII bytes of `placeholder` replaced by invalid UTF-8 of the same
// length (the wire format stays well-formed).
std::string WithBadUtf8(const google::protobuf::Message& message, const std::string& placeholder) {
  std::string bytes = message.SerializeAsString();
  const size_t at = bytes.find(placeholder);
  EXPECT_NE(at, std::string::npos);
  bytes[at] = '\xff';
  for (size_t i = 1; i < placeholder.size(); ++i) bytes[at + i] = '\xc3';  // lone lead bytes
  return bytes;
}

TEST(RequestParsingTest, ValidRequestsParse) {
  v1::GenerateRequest request;
  request.set_text("héllo wörld");
  request.mutable_stopping()->add_stop_strings("\n");
  v1::GenerateRequest parsed;
  ASSERT_TRUE(ParseRequestBytes(request.SerializeAsString(), &parsed).ok());
  EXPECT_EQ(parsed.text(), "héllo wörld");
  EXPECT_EQ(parsed.stopping().stop_strings(0), "\n");
  // An empty message is a valid (empty) request.
  v1::GetModelInfoRequest info;
  EXPECT_TRUE(ParseRequestBytes("", &info).ok());
}

TEST(RequestParsingTest, InvalidUtf8NamesTheFieldPath) {
  struct Case {
    std::string bytes;
    std::string field;
  };
  std::vector<Case> cases;
  {
    v1::GenerateRequest r;
    r.set_text("PLACEHOLDER");
    cases.push_back({WithBadUtf8(r, "PLACEHOLDER"), "text"});
  }
  {
    v1::GenerateRequest r;
    r.set_text("ok");
    r.mutable_stopping()->add_stop_strings("fine");
    r.mutable_stopping()->add_stop_strings("also fine");
    r.mutable_stopping()->add_stop_strings("PLACEHOLDER");
    cases.push_back({WithBadUtf8(r, "PLACEHOLDER"), "stopping.stop_strings[2]"});
  }
  {
    v1::ScoreRequest r;
    v1::ContinuationPair* a = r.mutable_pairs()->add_pairs();
    a->set_context("a");
    a->set_continuation(" b");
    v1::ContinuationPair* b = r.mutable_pairs()->add_pairs();
    b->set_context("c");
    b->set_continuation("PLACEHOLDER");
    cases.push_back({WithBadUtf8(r, "PLACEHOLDER"), "pairs.pairs[1].continuation"});
  }
  {
    v1::AbortRequest r;
    r.set_request_id("PLACEHOLDER");
    cases.push_back({WithBadUtf8(r, "PLACEHOLDER"), "request_id"});
  }
  for (const Case& c : cases) {
    // Parse into the message type the bytes came from.
    v1::GenerateRequest generate;
    v1::ScoreRequest score;
    v1::AbortRequest abort;
    google::protobuf::Message* target = &generate;
    if (c.field.rfind("pairs", 0) == 0) target = &score;
    if (c.field == "request_id") target = &abort;
    absl::Status s = ParseRequestBytes(c.bytes, target);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << c.field;
    EXPECT_THAT(s.message(), HasSubstr(c.field + ": invalid UTF-8 at byte 0 of the string"));
    EXPECT_THAT(s.message(), Not(HasSubstr("\xff")));  // the client's bytes are not quoted
  }
}

TEST(RequestParsingTest, TruncationsSayWhereAndWhat) {
  v1::GenerateRequest request;
  request.set_text("a prompt");
  request.mutable_stopping()->set_max_new_tokens(300);  // a two-byte varint
  const std::string full = request.SerializeAsString();
  v1::GenerateRequest parsed;
  // Cut inside the text: the declared length runs past the end.
  absl::Status s = ParseRequestBytes(full.substr(0, 5), &parsed);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("text: the message is truncated: the field declares 8 bytes"));
  // Cut inside the nested message's varint: the outer length is wrong first.
  s = ParseRequestBytes(full.substr(0, full.size() - 1), &parsed);
  EXPECT_THAT(s.message(), HasSubstr("stopping: the message is truncated"));

  // A packed token id list whose last varint is incomplete, lengths consistent.
  std::string packed = "\x12\x03\x0a\x01\x81";  // token_ids { ids: [0x81 ...] }
  s = ParseRequestBytes(packed, &parsed);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("token_ids.ids: element 0 of the packed values is truncated"));

  // A lone tag byte whose varint never ends.
  s = ParseRequestBytes("\x80", &parsed);
  EXPECT_THAT(s.message(), HasSubstr("truncated or malformed at byte 0"));
  // Field number 0 and wire types protobuf refuses.
  EXPECT_THAT(ParseRequestBytes(std::string("\x00\x01", 2), &parsed).message(),
              HasSubstr("malformed at byte 0"));
  EXPECT_THAT(ParseRequestBytes("\x0f", &parsed).message(), HasSubstr("wire type 7"));
}

TEST(RequestParsingTest, Utf8RulesMatchProtobuf) {
  size_t bad = 0;
  EXPECT_TRUE(IsValidUtf8("plain ascii", &bad));
  EXPECT_TRUE(IsValidUtf8("\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80", &bad));  // é € 😀
  EXPECT_FALSE(IsValidUtf8("ab\xc0\xaf", &bad));                             // overlong '/'
  EXPECT_EQ(bad, 2u);
  EXPECT_FALSE(IsValidUtf8("\xed\xa0\x80", &bad));      // a surrogate
  EXPECT_FALSE(IsValidUtf8("\xf4\x90\x80\x80", &bad));  // over U+10FFFF
  EXPECT_FALSE(IsValidUtf8("x\xe2\x82", &bad));         // cut short
  EXPECT_EQ(bad, 1u);
  // Everything IsValidUtf8 accepts, protobuf accepts, and the other way round.
  for (const std::string text : {"\xc3\xa9", "\xc0\xaf", "\xed\xa0\x80", "\xef\xbf\xbf",
                                 "\xf4\x8f\xbf\xbf", "\xf4\x90\x80\x80", "\xe2\x82"}) {
    v1::AbortRequest request;
    request.set_request_id(text);  // set_ does not validate; parsing does
    v1::AbortRequest parsed;
    EXPECT_EQ(ParseRequestBytes(request.SerializeAsString(), &parsed).ok(),
              IsValidUtf8(text, &bad));
  }
}

TEST(RequestParsingTest, SerializeResponseRoundTrips) {
  v1::AbortResponse response;
  response.set_found(true);
  grpc::ByteBuffer buffer = SerializeResponse(response);
  v1::AbortResponse parsed;
  ASSERT_TRUE(ParseRequest(buffer, &parsed).ok());
  EXPECT_TRUE(parsed.found());
}

TEST(LogSafeTest, EscapesControlAndNonAsciiBytes) {
  EXPECT_EQ(LogSafe("plain-id_1.2:3"), "plain-id_1.2:3");
  EXPECT_EQ(LogSafe("a\nb\r\tc\\d"), "a\\nb\\r\\tc\\\\d");
  EXPECT_EQ(LogSafe(std::string("\x1b[31m\x00\x7f\xc3\xa9", 9)), "\\x1b[31m\\x00\\x7f\\xc3\\xa9");
  // A forged line stays on the one line.
  EXPECT_EQ(LogSafe("x\n2030-01-01 INFO forged").find('\n'), std::string::npos);
}

TEST(LogSafeTest, TruncatesStatingTheFullSize) {
  const std::string huge(1 << 20, 'y');
  const std::string safe = LogSafe(huge);
  EXPECT_EQ(safe, std::string(kLogClientStringBytes, 'y') + "...(1048576 bytes)");
  EXPECT_EQ(LogSafe(std::string(64, 'z')), std::string(64, 'z'));  // at the bound: whole
  EXPECT_EQ(LogSafe("abcdef", 3), "abc...(6 bytes)");
  // The bound counts input bytes: escaping may make the output longer, never unbounded.
  EXPECT_LE(LogSafe(std::string(10000, '\n')).size(), 4 * kLogClientStringBytes + 32);
}

TEST(WorkPoolTest, RunsTasksOffTheCallingThreadAndFinishesQueuedWorkOnDestruction) {
  std::atomic<int> ran{0};
  std::atomic<bool> other_thread{true};
  const std::thread::id caller = std::this_thread::get_id();
  {
    WorkPool pool(2);
    absl::Notification release;
    // Two blocked tasks occupy both workers; the rest queue behind them.
    for (int i = 0; i < 2; ++i) pool.Post([&] { release.WaitForNotification(); });
    for (int i = 0; i < 10; ++i) {
      pool.Post([&] {
        if (std::this_thread::get_id() == caller) other_thread = false;
        ++ran;
      });
    }
    absl::SleepFor(absl::Milliseconds(20));
    EXPECT_EQ(ran.load(), 0);
    EXPECT_EQ(pool.queued(), 10u);
    release.Notify();
  }  // the destructor runs what is queued
  EXPECT_EQ(ran.load(), 10);
  EXPECT_TRUE(other_thread.load());
}

}  // namespace
}  // namespace spqr
