// The tokenizer.json implementation against Hugging Face `tokenizers` (the reference): the
// fixtures of tests/data/hf-tokenizers/ were made by tools/make_hf_tokenizer_fixtures.py, which
// trains the tokenizers and records the reference's ids and decoded text. With
// SPQR_HF_TOKENIZER_CASES=<file> (written by that script's --check --cases-out, see
// tests/unit/check_hf_tokenizer_reference.sh) fresh random cases are compared as well.
#include "engine/tokenizer/hf_tokenizer.h"

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "engine/runtime/detokenizer.h"
#include "engine/runtime/model.h"
#include "engine/tokenizer/hf_pre_tokenizer.h"
#include "engine/tokenizer/tokenizer.h"
#include "engine/tokenizer/utf8.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/unit/safetensors_test_util.h"

namespace spqr {
namespace {

using ::spqr::testing::TempDir;
using ::testing::HasSubstr;

const std::string kFixtures = std::string(SPQR_SOURCE_DIR) + "/tests/data/hf-tokenizers";
const char* const kKinds[] = {"gpt2", "llama3", "qwen2", "llama2", "metaspace"};

std::string FromHex(const std::string& hex) {
  std::string out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) {
    out.push_back(static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  }
  return out;
}

std::string Printable(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if (c >= 0x20 && c < 0x7f && c != '\\') {
      out.push_back(static_cast<char>(c));
    } else {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\x%02x", c);
      out.append(buf);
    }
  }
  return out;
}

nlohmann::json ReadJson(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return nlohmann::json::parse(ss.str());
}

void WriteFile(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
}

class HfTokenizerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    for (const char* kind : kKinds) {
      auto tokenizer = Tokenizer::Open(kFixtures + "/" + kind + "/tokenizer.json", -1, {});
      ASSERT_TRUE(tokenizer.ok()) << kind << ": " << tokenizer.status();
      tokenizers_[kind] = *std::move(tokenizer);
    }
  }
  static void TearDownTestSuite() { tokenizers_.clear(); }

  // Compares every case of a file in the expected.json format; returns the number compared.
  static int CompareCases(const nlohmann::json& cases) {
    int compared = 0, failures = 0;
    for (const auto& c : cases["encode"]) {
      const Tokenizer& tok = *tokenizers_.at(c["tokenizer"].get<std::string>());
      const std::string text = FromHex(c["text_hex"].get<std::string>());
      const auto ids = c["ids"].get<std::vector<int32_t>>();
      const std::vector<int32_t> got = tok.Encode(text, false);
      EXPECT_EQ(got, ids) << c["tokenizer"] << " encode \"" << Printable(text) << "\"";
      const std::string decoded = FromHex(c["decoded_hex"].get<std::string>());
      EXPECT_EQ(tok.Decode(ids), decoded)
          << c["tokenizer"] << " decode of \"" << Printable(text) << "\"";
      if (c.contains("ids_special")) {
        EXPECT_EQ(tok.Encode(text, true), c["ids_special"].get<std::vector<int32_t>>())
            << c["tokenizer"] << " encode with special tokens \"" << Printable(text) << "\"";
      }
      failures += got != ids;
      ++compared;
      if (failures > 20) return compared;  // enough output to debug
    }
    for (const auto& c : cases["decode"]) {
      const Tokenizer& tok = *tokenizers_.at(c["tokenizer"].get<std::string>());
      const auto ids = c["ids"].get<std::vector<int32_t>>();
      EXPECT_EQ(Printable(tok.Decode(ids)), Printable(FromHex(c["decoded_hex"].get<std::string>())))
          << c["tokenizer"] << " decode of " << nlohmann::json(ids).dump();
      ++compared;
    }
    return compared;
  }

  static std::map<std::string, std::unique_ptr<Tokenizer>> tokenizers_;
};

std::map<std::string, std::unique_ptr<Tokenizer>> HfTokenizerTest::tokenizers_;

TEST_F(HfTokenizerTest, MatchesTheReferenceOnTheCommittedCases) {
  const nlohmann::json expected = ReadJson(kFixtures + "/expected.json");
  EXPECT_GT(CompareCases(expected), 1000);
}

TEST_F(HfTokenizerTest, MatchesTheReferenceOnFreshCases) {
  const char* path = std::getenv("SPQR_HF_TOKENIZER_CASES");
  if (path == nullptr) {
    GTEST_SKIP() << "SPQR_HF_TOKENIZER_CASES is not set (check_hf_tokenizer_reference.sh sets it)";
  }
  EXPECT_GT(CompareCases(ReadJson(path)), 100);
}

TEST_F(HfTokenizerTest, ReportsKindAndSpecialTokens) {
  const Tokenizer& llama3 = *tokenizers_.at("llama3");
  EXPECT_EQ(llama3.kind(), "hf-bpe");
  // TemplateProcessing "<|begin_of_text|> $A": that token is the bos.
  EXPECT_EQ(llama3.IdToPiece(llama3.bos_id()), "<|begin_of_text|>");
  // Qwen2-style: no bos is added.
  EXPECT_EQ(tokenizers_.at("qwen2")->bos_id(), -1);
  // Llama 2 style, tokenizer_config.json: LlamaTokenizerFast with add_bos_token, eos "</s>".
  const Tokenizer& llama2 = *tokenizers_.at("llama2");
  EXPECT_EQ(llama2.bos_id(), 1);
  EXPECT_EQ(llama2.eos_ids(), std::vector<int32_t>{2});
  EXPECT_EQ(llama2.IdToPiece(3), "<0x00>");
  EXPECT_EQ(llama2.IdToPiece(-1), "");
  EXPECT_EQ(llama2.IdToPiece(llama2.vocab_size()), "");
  // Out-of-range ids decode to nothing.
  EXPECT_EQ(llama2.Decode({-5, 100000}), "");
  for (const auto& [kind, tok] : tokenizers_) EXPECT_GE(tok->max_piece_bytes(), 2) << kind;
}

TEST_F(HfTokenizerTest, ConfigBosReplacesTheTemplatesAndEosIdsOverride) {
  auto tok = Tokenizer::Open(kFixtures + "/llama2/tokenizer.json", 2, {7, -1, 7});
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ((*tok)->bos_id(), 2);
  EXPECT_EQ((*tok)->Encode("", true), std::vector<int32_t>{2});
  EXPECT_EQ((*tok)->eos_ids(), std::vector<int32_t>{7});
  auto bad = Tokenizer::Open(kFixtures + "/llama2/tokenizer.json", -1, {1 << 20});
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("outside the vocabulary"));
}

// Streaming never releases a broken UTF-8 sequence, and the deltas add up to the full decode.
TEST_F(HfTokenizerTest, IncrementalDetokenizationKeepsCharactersWhole) {
  const std::string text = "Hi 日本語 🙂👍🏽 naïve\n  café — ∑ x² done";
  for (const auto& [kind, tok] : tokenizers_) {
    const std::vector<int32_t> prompt = tok->Encode("Prompt:", true);
    const std::vector<int32_t> ids = tok->Encode(text, false);
    IncrementalDetokenizer detok(
        [&](std::span<const int32_t> s) {
          return tok->Decode(std::vector<int32_t>(s.begin(), s.end()));
        },
        prompt);
    std::string streamed;
    for (int32_t id : ids) {
      const std::string delta = detok.Append(id);
      EXPECT_TRUE(utf8::IsValid(delta)) << kind;
      EXPECT_EQ(delta.find(utf8::kReplacement), std::string::npos) << kind << ": " << delta;
      streamed += delta;
    }
    streamed += detok.Flush();
    std::vector<int32_t> all = prompt;
    all.insert(all.end(), ids.begin(), ids.end());
    const std::string whole = tok->Decode(all), prefix = tok->Decode(prompt);
    ASSERT_EQ(whole.substr(0, prefix.size()), prefix) << kind;
    EXPECT_EQ(streamed, whole.substr(prefix.size())) << kind;
  }
}

// Digits (SmolLM2 / StarCoder tokenizers) splits on every \p{N} character (tokenizers'
// char::is_numeric: Nd, Nl, No), one piece per character or per run.
TEST(HfPreTokenizer, DigitsIsolatesNumericCharactersOrRuns) {
  const auto split = [](bool individual, const std::string& text) {
    auto pre =
        ParseHfPreTokenizer(nlohmann::json{{"type", "Digits"}, {"individual_digits", individual}});
    EXPECT_TRUE(pre.ok()) << pre.status();
    std::vector<HfPiece> pieces = {{text, true}};
    (*pre)->PreTokenize(&pieces);
    std::vector<std::string> out;
    for (const HfPiece& p : pieces) out.push_back(p.text);
    return out;
  };
  // "\u0663" is ARABIC-INDIC DIGIT THREE (Nd), "\u00b2" SUPERSCRIPT TWO (No), "\u2167" ROMAN
  // NUMERAL EIGHT (Nl).
  const std::string text = "ab 12\u0663x\u00b2\u2167 9";
  EXPECT_EQ(split(true, text), (std::vector<std::string>{"ab ", "1", "2", "\u0663", "x", "\u00b2",
                                                         "\u2167", " ", "9"}));
  EXPECT_EQ(split(false, text),
            (std::vector<std::string>{"ab ", "12\u0663", "x", "\u00b2\u2167", " ", "9"}));
}

TEST(HfTokenizerErrors, UnsupportedConstructsAreNamed) {
  TempDir dir;
  const nlohmann::json base = ReadJson(kFixtures + "/gpt2/tokenizer.json");
  const auto open_with = [&](const std::string& field, const nlohmann::json& value) {
    nlohmann::json j = base;
    if (field == "model.type") {
      j["model"]["type"] = value;
    } else {
      j[field] = value;
    }
    WriteFile(dir.path() + "/tokenizer.json", j.dump());
    return Tokenizer::Open(dir.path() + "/tokenizer.json", -1, {});
  };
  struct Case {
    std::string field;
    nlohmann::json value;
    std::string named;
  };
  const std::vector<Case> cases = {
      {"model.type", "WordPiece", "model type \"WordPiece\""},
      {"model.type", "Unigram", "model type \"Unigram\""},
      {"normalizer", {{"type", "Lowercase"}}, "normalizer type \"Lowercase\""},
      {"normalizer",
       {{"type", "Sequence"}, {"normalizers", {{{"type", "BertNormalizer"}}}}},
       "normalizer type \"BertNormalizer\""},
      {"pre_tokenizer", {{"type", "Whitespace"}}, "pre_tokenizer type \"Whitespace\""},
      {"decoder", {{"type", "WordPiece"}}, "decoder type \"WordPiece\""},
      {"post_processor", {{"type", "Unknown"}}, "post_processor type \"Unknown\""},
  };
  for (const Case& c : cases) {
    auto tok = open_with(c.field, c.value);
    ASSERT_FALSE(tok.ok()) << c.named;
    EXPECT_EQ(tok.status().code(), absl::StatusCode::kUnimplemented) << tok.status();
    EXPECT_THAT(std::string(tok.status().message()), HasSubstr(c.named));
    EXPECT_THAT(std::string(tok.status().message()), HasSubstr(dir.path() + "/tokenizer.json"));
  }
  auto bad_regex = open_with("pre_tokenizer", {{"type", "Split"},
                                               {"pattern", {{"Regex", "(unclosed"}}},
                                               {"behavior", "Isolated"},
                                               {"invert", false}});
  EXPECT_THAT(std::string(bad_regex.status().message()), HasSubstr("(unclosed"));
  // A field of the wrong JSON type is a status, not an exception.
  nlohmann::json wrong_type = base;
  wrong_type["model"]["fuse_unk"] = "yes";
  auto typed = HfTokenizer::Parse(wrong_type.dump(), "", "typed.json", -1, {});
  EXPECT_THAT(std::string(typed.status().message()), HasSubstr("typed.json: malformed"));
  WriteFile(dir.path() + "/tokenizer.json", "{not json");
  auto not_json = Tokenizer::Open(dir.path() + "/tokenizer.json", -1, {});
  EXPECT_THAT(std::string(not_json.status().message()), HasSubstr("not valid JSON"));
  nlohmann::json bad_merge = base;
  bad_merge["model"]["merges"] = {"a b c"};
  WriteFile(dir.path() + "/tokenizer.json", bad_merge.dump());
  auto merge = Tokenizer::Open(dir.path() + "/tokenizer.json", -1, {});
  EXPECT_THAT(std::string(merge.status().message()), HasSubstr("merge \"a b c\""));
}

TEST(OpenModelTokenizer, PrefersTokenizerJsonAndFallsBackToTheSentencePieceModel) {
  TempDir dir;
  const std::string sp = std::string(SPQR_SOURCE_DIR) + "/tests/data/test-model/tokenizer.model";
  auto none = OpenModelTokenizer(dir.path(), -1, {});
  EXPECT_EQ(none.status().code(), absl::StatusCode::kNotFound);

  std::filesystem::copy_file(sp, dir.path() + "/tokenizer.model");
  auto only_sp = OpenModelTokenizer(dir.path(), -1, {});
  ASSERT_TRUE(only_sp.ok()) << only_sp.status();
  EXPECT_EQ((*only_sp)->kind(), "sentencepiece");

  std::filesystem::copy_file(kFixtures + "/qwen2/tokenizer.json", dir.path() + "/tokenizer.json");
  std::string note;
  auto both = OpenModelTokenizer(dir.path(), -1, {}, &note);
  ASSERT_TRUE(both.ok()) << both.status();
  EXPECT_EQ((*both)->kind(), "hf-bpe");
  EXPECT_EQ(note, "");

  nlohmann::json unsupported = ReadJson(kFixtures + "/qwen2/tokenizer.json");
  unsupported["normalizer"] = {{"type", "Lowercase"}};
  WriteFile(dir.path() + "/tokenizer.json", unsupported.dump());
  auto fallback = OpenModelTokenizer(dir.path(), -1, {}, &note);
  ASSERT_TRUE(fallback.ok()) << fallback.status();
  EXPECT_EQ((*fallback)->kind(), "sentencepiece");
  EXPECT_THAT(note, HasSubstr("Lowercase"));

  std::filesystem::remove(dir.path() + "/tokenizer.model");
  auto error = OpenModelTokenizer(dir.path(), -1, {});
  EXPECT_THAT(std::string(error.status().message()), HasSubstr("Lowercase"));
}

// A byte-level tokenizer.json small enough for the test model's 512-token embedding: the 256
// byte characters, two merges and one special token.
std::string TinyByteLevelTokenizerJson() {
  nlohmann::json vocab = nlohmann::json::object();
  for (int b = 0; b < 256; ++b) vocab[ByteLevelChar(static_cast<unsigned char>(b))] = b;
  const std::string space = ByteLevelChar(' ');
  vocab[space + "t"] = 256;
  vocab["he"] = 257;
  nlohmann::json j = {
      {"version", "1.0"},
      {"added_tokens",
       {{{"id", 258}, {"content", "<|endoftext|>"}, {"special", true}, {"normalized", false}}}},
      {"normalizer", nullptr},
      {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}},
      {"post_processor", nullptr},
      {"decoder", {{"type", "ByteLevel"}}},
      {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", {space + " t", "h e"}}}}};
  return j.dump();
}

TEST(LoadModel, AcceptsADirectoryWithOnlyTokenizerJson) {
  TempDir dir;
  const std::string model = std::string(SPQR_SOURCE_DIR) + "/tests/data/test-model";
  for (const char* f : {"config.json", "generation_config.json", "model.safetensors"}) {
    std::filesystem::copy_file(model + "/" + f, dir.path() + "/" + f);
  }
  WriteFile(dir.path() + "/tokenizer.json", TinyByteLevelTokenizerJson());
  ModelLoadOptions options;
  options.backend = "cpu";
  options.num_threads = 1;
  auto loaded = LoadModel(dir.path(), options);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  const Tokenizer& tok = *(*loaded)->tokenizer;
  EXPECT_EQ(tok.kind(), "hf-bpe");
  EXPECT_EQ(tok.vocab_size(), 259);
  EXPECT_EQ(tok.Encode("the t<|endoftext|>", false), (std::vector<int32_t>{'t', 257, 256, 258}));
  EXPECT_EQ(tok.Decode({'t', 257, 256, 258}), "the t");

  // A tokenizer larger than the model's embedding is refused, naming its kind.
  std::filesystem::copy_file(kFixtures + "/qwen2/tokenizer.json", dir.path() + "/tokenizer.json",
                             std::filesystem::copy_options::overwrite_existing);
  auto too_big = LoadModel(dir.path(), options);
  EXPECT_THAT(std::string(too_big.status().message()), HasSubstr("hf-bpe tokenizer has"));
}

TEST(Utf8, RepairReplacesMaximalInvalidSubparts) {
  // Python: bytes.decode("utf-8", "replace").
  EXPECT_EQ(utf8::Repair("a\xff"
                         "b"),
            "a\xEF\xBF\xBD"
            "b");
  EXPECT_EQ(utf8::Repair("\xe6\x97"), "\xEF\xBF\xBD");
  EXPECT_EQ(utf8::Repair("\xed\xa0\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");
  EXPECT_EQ(utf8::Repair("\xf0\x9f\x99"), "\xEF\xBF\xBD");
  EXPECT_FALSE(utf8::IsValid("\xc0\xaf"));
  EXPECT_TRUE(utf8::IsValid("plain ascii text, longer than eight bytes \xe6\x97\xa5"));
}

}  // namespace
}  // namespace spqr
