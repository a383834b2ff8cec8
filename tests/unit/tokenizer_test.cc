#include "engine/tokenizer/tokenizer.h"

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/unit/safetensors_test_util.h"

namespace spqr {
namespace {

using ::spqr::testing::TempDir;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

// The committed test model's tokenizer (tools/make_test_model.py): SentencePiece BPE, 512 pieces,
// byte fallback, unk=0 bos=1 eos=2.
const std::string kTokenizerPath =
    std::string(SPQR_SOURCE_DIR) + "/tests/data/test-model/tokenizer.model";

std::unique_ptr<Tokenizer> OpenTestTokenizer(int32_t bos = -1, std::vector<int32_t> eos = {}) {
  auto tokenizer = Tokenizer::Open(kTokenizerPath, bos, std::move(eos));
  EXPECT_TRUE(tokenizer.ok()) << tokenizer.status();
  return tokenizer.ok() ? *std::move(tokenizer) : nullptr;
}

TEST(TokenizerTest, FallsBackToTheModelsOwnSpecialIds) {
  auto tokenizer = OpenTestTokenizer();
  ASSERT_NE(tokenizer, nullptr);
  EXPECT_EQ(tokenizer->vocab_size(), 512);
  EXPECT_EQ(tokenizer->bos_id(), 1);
  EXPECT_THAT(tokenizer->eos_ids(), ElementsAre(2));
  EXPECT_TRUE(tokenizer->IsEos(2));
  EXPECT_FALSE(tokenizer->IsEos(1));
}

TEST(TokenizerTest, ConfigIdsOverrideAndNegativeIdsAreIgnored) {
  auto tokenizer = OpenTestTokenizer(5, {7, -1, 7, 2});
  ASSERT_NE(tokenizer, nullptr);
  EXPECT_EQ(tokenizer->bos_id(), 5);
  EXPECT_THAT(tokenizer->eos_ids(), ElementsAre(7, 2));
  EXPECT_TRUE(tokenizer->IsEos(7));
  EXPECT_THAT(tokenizer->Encode("Hello", true).front(), 5);

  // Only negative ids given: the model's own eos.
  tokenizer = OpenTestTokenizer(-1, {-1});
  ASSERT_NE(tokenizer, nullptr);
  EXPECT_THAT(tokenizer->eos_ids(), ElementsAre(2));
}

TEST(TokenizerTest, EncodesLikeTheSentencePieceReference) {
  auto tokenizer = OpenTestTokenizer();
  ASSERT_NE(tokenizer, nullptr);
  // Ids from Python: sentencepiece.SentencePieceProcessor(model_file=...).encode("Hello world").
  EXPECT_THAT(tokenizer->Encode("Hello world", false),
              ElementsAre(437, 481, 438, 380, 439, 276, 263, 449, 448));
  EXPECT_THAT(tokenizer->Encode("Hello world", true),
              ElementsAre(1, 437, 481, 438, 380, 439, 276, 263, 449, 448));
  EXPECT_THAT(tokenizer->Encode("", false), IsEmpty());
  EXPECT_THAT(tokenizer->Encode("", true), ElementsAre(1));
}

TEST(TokenizerTest, RoundTripsTextIncludingBytesFallback) {
  auto tokenizer = OpenTestTokenizer();
  ASSERT_NE(tokenizer, nullptr);
  const std::vector<std::string> sentences = {
      "The GNU General Public License is a free, copyleft license.",
      "  leading spaces, two  spaces, tabs\tand\nnewlines  ",
      "naïve café — 日本語 🙂",
      "Ünïcödé: Привет, мир! ∑ x² ≤ ∞",
      "0123456789 !@#$%^&*()",
  };
  for (const std::string& text : sentences) {
    const std::vector<int32_t> ids = tokenizer->Encode(text, true);
    ASSERT_FALSE(ids.empty());
    for (int32_t id : ids) {
      EXPECT_GE(id, 0);
      EXPECT_LT(id, 512);
    }
    // The test tokenizer uses the identity normalizer and keeps extra whitespace, so decoding
    // restores the text exactly (bos produces no text).
    EXPECT_EQ(tokenizer->Decode(ids), text);
  }
}

TEST(TokenizerTest, NonAsciiTextUsesBytePieces) {
  auto tokenizer = OpenTestTokenizer();
  ASSERT_NE(tokenizer, nullptr);
  // 512 pieces cannot hold CJK characters, so they are spelled as UTF-8 byte pieces.
  const std::vector<int32_t> ids = tokenizer->Encode("日本", false);
  std::vector<std::string> pieces;
  for (int32_t id : ids) pieces.push_back(tokenizer->IdToPiece(id));
  EXPECT_THAT(pieces, ::testing::Contains("<0xE6>"));
  EXPECT_EQ(tokenizer->Decode(ids), "日本");
}

TEST(TokenizerTest, ControlAndOutOfRangeIdsProduceNoText) {
  auto tokenizer = OpenTestTokenizer();
  ASSERT_NE(tokenizer, nullptr);
  std::vector<int32_t> ids = tokenizer->Encode("Hello world", false);
  ids.insert(ids.begin(), 1);  // bos
  ids.push_back(2);            // eos
  EXPECT_EQ(tokenizer->Decode(ids), "Hello world");
  // Ids of a padded model vocabulary beyond the tokenizer's pieces, and garbage, are skipped.
  ids.push_back(600);
  ids.insert(ids.begin() + 2, -4);
  EXPECT_EQ(tokenizer->Decode(ids), "Hello world");
  EXPECT_EQ(tokenizer->Decode({}), "");
}

TEST(TokenizerTest, IdToPiece) {
  auto tokenizer = OpenTestTokenizer();
  ASSERT_NE(tokenizer, nullptr);
  EXPECT_EQ(tokenizer->IdToPiece(0), "<unk>");
  EXPECT_EQ(tokenizer->IdToPiece(1), "<s>");
  EXPECT_EQ(tokenizer->IdToPiece(2), "</s>");
  EXPECT_EQ(tokenizer->IdToPiece(-1), "");
  EXPECT_EQ(tokenizer->IdToPiece(512), "");
}

// The longest text one token stands for bounds the bytes of a prompt that fits in n tokens (the
// server refuses longer texts before tokenizing). The test model's longest piece has 8 bytes
// (measured with Python's sentencepiece over every piece, U+2581 counted as one space).
TEST(TokenizerTest, MaxPieceBytesBoundsTheTextPerToken) {
  auto tokenizer = OpenTestTokenizer();
  EXPECT_EQ(tokenizer->max_piece_bytes(), 8);
  // Without whitespace runs for the normalizer to collapse, text bytes <= tokens x the bound.
  for (const std::string text :
       {"The kernel allocates memory in pages.", "unicode: \xc3\xa9\xe2\x82\xac", "x"}) {
    const std::vector<int32_t> ids = tokenizer->Encode(text, /*add_bos=*/false);
    EXPECT_LE(text.size(), ids.size() * tokenizer->max_piece_bytes()) << text;
  }
}

TEST(TokenizerTest, OpenErrorsNameThePath) {
  TempDir dir;
  auto missing = Tokenizer::Open(dir.path() + "/tokenizer.model", -1, {});
  EXPECT_TRUE(absl::IsNotFound(missing.status())) << missing.status();
  EXPECT_THAT(std::string(missing.status().message()), HasSubstr(dir.path() + "/tokenizer.model"));

  const std::string garbage = dir.Write("bad.model", "this is not a protobuf \xff\xff\xff");
  auto invalid = Tokenizer::Open(garbage, -1, {});
  EXPECT_TRUE(absl::IsInvalidArgument(invalid.status())) << invalid.status();
  EXPECT_THAT(std::string(invalid.status().message()), HasSubstr(garbage));

  auto out_of_range = Tokenizer::Open(kTokenizerPath, -1, {2, 5000});
  EXPECT_TRUE(absl::IsInvalidArgument(out_of_range.status())) << out_of_range.status();
  EXPECT_THAT(std::string(out_of_range.status().message()),
              HasSubstr("eos id 5000 is outside the vocabulary"));
}

}  // namespace
}  // namespace spqr
