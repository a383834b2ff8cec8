#include "engine/runtime/detokenizer.h"

#include <string>
#include <vector>

#include "engine/tokenizer/tokenizer.h"
#include "gtest/gtest.h"

namespace spqr {
namespace {

// True when `s` is well-formed UTF-8 (no truncated or stray bytes).
bool IsValidUtf8(const std::string& s) {
  size_t i = 0;
  while (i < s.size()) {
    const unsigned char c = s[i];
    const size_t len = c < 0x80           ? 1
                       : (c >> 5) == 0x6  ? 2
                       : (c >> 4) == 0xE  ? 3
                       : (c >> 3) == 0x1E ? 4
                                          : 0;
    if (len == 0 || i + len > s.size()) return false;
    for (size_t k = 1; k < len; ++k) {
      if ((static_cast<unsigned char>(s[i + k]) >> 6) != 0x2) return false;
    }
    i += len;
  }
  return true;
}

// A SentencePiece-like decoder over a tiny vocabulary: ids 0-2 are control tokens (no text),
// ids 3..258 are the byte-fallback pieces <0x00>..<0xFF>, the rest are word pieces where "_"
// stands for the word-boundary space. Like SentencePiece it drops the leading space of the
// decoded text and turns bytes that do not form UTF-8 characters into U+FFFD.
class FakeSentencePiece {
 public:
  static constexpr int32_t kBos = 1, kEos = 2, kByteBase = 3;
  FakeSentencePiece()
      : words_{"_the", "_cat", "_sat", "_on", "_mat", "ST", "OP", "_S", "TOP", "."} {}
  int32_t Word(const std::string& w) const {
    for (size_t i = 0; i < words_.size(); ++i) {
      if (words_[i] == w) return static_cast<int32_t>(kByteBase + 256 + i);
    }
    ADD_FAILURE() << "no word " << w;
    return 0;
  }
  static int32_t Byte(unsigned char b) { return kByteBase + b; }
  std::vector<int32_t> Bytes(const std::string& s) const {
    std::vector<int32_t> ids;
    for (unsigned char c : s) ids.push_back(Byte(c));
    return ids;
  }
  std::string Decode(std::span<const int32_t> ids) const {
    std::string raw;
    for (int32_t id : ids) {
      if (id < kByteBase) continue;
      if (id < kByteBase + 256) {
        raw.push_back(static_cast<char>(id - kByteBase));
      } else {
        for (char c : words_[id - kByteBase - 256]) raw.push_back(c == '_' ? ' ' : c);
      }
    }
    if (!raw.empty() && raw[0] == ' ') raw.erase(0, 1);
    std::string out;
    size_t i = 0;
    while (i < raw.size()) {
      size_t len = 1;
      while (len <= 4 && i + len <= raw.size() && !IsValidUtf8(raw.substr(i, len))) ++len;
      if (len <= 4 && i + len <= raw.size()) {
        out += raw.substr(i, len);
        i += len;
      } else {
        out += "\xEF\xBF\xBD";
        ++i;
      }
    }
    return out;
  }
  DecodeFn Fn() const {
    return [this](std::span<const int32_t> ids) { return Decode(ids); };
  }

 private:
  std::vector<std::string> words_;
};

TEST(FakeSentencePieceTest, BehavesLikeSentencePiece) {
  FakeSentencePiece sp;
  const std::vector<int32_t> ids = {sp.Word("_the"), sp.Word("_cat")};
  EXPECT_EQ(sp.Decode(ids), "the cat");
  EXPECT_EQ(sp.Decode(sp.Bytes("\xE4\xB8")), "\xEF\xBF\xBD\xEF\xBF\xBD");
  EXPECT_EQ(sp.Decode(sp.Bytes("\xE4\xB8\x96")), "\xE4\xB8\x96");
}

TEST(IncrementalDetokenizerTest, KeepsWordSpacesUsingPromptContext) {
  FakeSentencePiece sp;
  const std::vector<int32_t> prompt = {FakeSentencePiece::kBos, sp.Word("_the")};
  IncrementalDetokenizer detok(sp.Fn(), prompt);
  EXPECT_EQ(detok.Append(sp.Word("_cat")), " cat");
  EXPECT_EQ(detok.Append(sp.Word("_sat")), " sat");
  EXPECT_EQ(detok.Append(FakeSentencePiece::kEos), "");
  EXPECT_EQ(detok.Flush(), "");
}

TEST(IncrementalDetokenizerTest, NeverSplitsAUtf8Character) {
  FakeSentencePiece sp;
  // "é" (2 bytes), "世" (3 bytes), "😀" (4 bytes), as byte-fallback tokens between words.
  std::vector<int32_t> ids = {sp.Word("_the")};
  for (const std::string& piece :
       {std::string("\xC3\xA9"), std::string("\xE4\xB8\x96"), std::string("\xF0\x9F\x98\x80")}) {
    for (int32_t id : sp.Bytes(piece)) ids.push_back(id);
    ids.push_back(sp.Word("_cat"));
  }
  const std::vector<int32_t> prompt = {FakeSentencePiece::kBos};
  IncrementalDetokenizer detok(sp.Fn(), prompt);
  std::string all;
  int empty_deltas = 0;
  for (int32_t id : ids) {
    const std::string delta = detok.Append(id);
    EXPECT_TRUE(IsValidUtf8(delta)) << "delta splits a character";
    empty_deltas += delta.empty() ? 1 : 0;
    all += delta;
  }
  all += detok.Flush();
  EXPECT_EQ(all, sp.Decode(ids));
  EXPECT_EQ(empty_deltas, 1 + 2 + 3) << "the leading bytes of each character are held back";
}

TEST(IncrementalDetokenizerTest, FlushReleasesAnIncompleteCharacterAsReplacement) {
  FakeSentencePiece sp;
  const std::vector<int32_t> prompt = {sp.Word("_the")};
  IncrementalDetokenizer detok(sp.Fn(), prompt);
  EXPECT_EQ(detok.Append(sp.Word("_cat")), " cat");
  EXPECT_EQ(detok.Append(FakeSentencePiece::Byte(0xE4)), "");
  EXPECT_EQ(detok.Flush(), "\xEF\xBF\xBD");
}

TEST(IncrementalDetokenizerTest, LongGenerationMatchesFullDecode) {
  FakeSentencePiece sp;
  std::vector<int32_t> ids;
  const std::vector<std::string> words = {"_the", "_cat", "_sat", "_on", "_the", "_mat", "."};
  for (int i = 0; i < 300; ++i) {
    ids.push_back(sp.Word(words[i % words.size()]));
    if (i % 11 == 0) {
      for (int32_t b : sp.Bytes("\xE4\xB8\x96")) ids.push_back(b);
    }
  }
  IncrementalDetokenizer detok(sp.Fn(), std::vector<int32_t>{FakeSentencePiece::kBos});
  std::string all;
  for (int32_t id : ids) all += detok.Append(id);
  all += detok.Flush();
  EXPECT_EQ(all, sp.Decode(ids));
}

TEST(StopStringMatcherTest, WithoutStopStringsEverythingPassesThrough) {
  StopStringMatcher m({});
  EXPECT_EQ(m.Push("abc").text, "abc");
  EXPECT_EQ(m.Flush(), "");
}

TEST(StopStringMatcherTest, MatchesAcrossPushesAndHoldsBackPossiblePrefixes) {
  StopStringMatcher m({"STOP"});
  StopStringMatcher::Result r = m.Push("hello S");
  EXPECT_EQ(r.text, "hello ");  // "S" could start "STOP"
  EXPECT_FALSE(r.matched);
  r = m.Push("T");
  EXPECT_EQ(r.text, "");
  r = m.Push("OP and more");
  EXPECT_TRUE(r.matched);
  EXPECT_EQ(r.stop_string, "STOP");
  EXPECT_EQ(r.text, "");  // the stop string and what follows are cut
}

TEST(StopStringMatcherTest, ReleasesHeldTextOnceItCannotMatch) {
  StopStringMatcher m({"STOP"});
  EXPECT_EQ(m.Push("ST").text, "");
  StopStringMatcher::Result r = m.Push("AR");
  EXPECT_FALSE(r.matched);
  EXPECT_EQ(r.text, "STAR");
  EXPECT_EQ(m.Push("xS").text, "x");
  EXPECT_EQ(m.Flush(), "S");
}

TEST(StopStringMatcherTest, EarliestMatchWins) {
  StopStringMatcher m({"cat", "the"});
  StopStringMatcher::Result r = m.Push("on the cat");
  EXPECT_TRUE(r.matched);
  EXPECT_EQ(r.stop_string, "the");
  EXPECT_EQ(r.text, "on ");
}

TEST(StopStringMatcherTest, OverlappingPrefixesHoldTheLongestCandidate) {
  StopStringMatcher m({"abcd", "bcx"});
  EXPECT_EQ(m.Push("zabc").text, "z");  // "abc" may become "abcd"
  StopStringMatcher::Result r = m.Push("x");
  EXPECT_TRUE(r.matched);
  EXPECT_EQ(r.stop_string, "bcx");
  EXPECT_EQ(r.text, "a");  // "z" was released by the first push
}

TEST(StopStringMatcherTest, MultiByteStopStringIsHeldOnCharacterBoundaries) {
  StopStringMatcher m({"\xE4\xB8\x96\xE7\x95\x8C"});  // "世界"
  StopStringMatcher::Result r = m.Push("a\xE4\xB8\x96");
  EXPECT_EQ(r.text, "a");
  r = m.Push("\xE7\x95\x8C!");
  EXPECT_TRUE(r.matched);
  EXPECT_EQ(r.text, "");
}

TEST(DetokenizerWithStopStringsTest, StopStringSplitAcrossTokens) {
  FakeSentencePiece sp;
  IncrementalDetokenizer detok(sp.Fn(), std::vector<int32_t>{FakeSentencePiece::kBos});
  StopStringMatcher m({" STOP"});
  std::string released;
  bool matched = false;
  for (const char* w : {"_the", "_cat", "_S", "TOP", "_mat"}) {
    StopStringMatcher::Result r = m.Push(detok.Append(sp.Word(w)));
    released += r.text;
    if (r.matched) {
      matched = true;
      break;
    }
  }
  EXPECT_TRUE(matched);
  EXPECT_EQ(released, "the cat");
}

// The real SentencePiece tokenizer of the test model: byte-fallback pieces for characters outside
// its small vocabulary.
TEST(IncrementalDetokenizerTest, RealTokenizerStreamsValidUtf8) {
  auto tokenizer = Tokenizer::Open(
      std::string(SPQR_SOURCE_DIR) + "/tests/data/test-model/tokenizer.model", 1, {2});
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  const Tokenizer& tok = **tokenizer;
  DecodeFn decode = [&tok](std::span<const int32_t> ids) {
    return tok.Decode(std::vector<int32_t>(ids.begin(), ids.end()));
  };
  const std::vector<int32_t> prompt = tok.Encode("The", /*add_bos=*/true);
  const std::vector<int32_t> gen = tok.Encode("héllo 世界 ✓ the cat 😀 sat.", false);
  IncrementalDetokenizer detok(decode, prompt);
  std::string all;
  for (int32_t id : gen) {
    const std::string delta = detok.Append(id);
    EXPECT_TRUE(IsValidUtf8(delta));
    all += delta;
  }
  all += detok.Flush();
  std::vector<int32_t> full = prompt;
  full.insert(full.end(), gen.begin(), gen.end());
  EXPECT_EQ(tok.Decode(prompt) + all, tok.Decode(full));
  EXPECT_EQ(all, " héllo 世界 ✓ the cat 😀 sat.");
}

}  // namespace
}  // namespace spqr
