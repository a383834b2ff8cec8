// engine/runtime/model_chat.h: loading a model directory's chat template with the model, the
// end-of-turn tokens, the refusals (no template, unsupported construct, a template that raises)
// and the tokenization of rendered prompts (no second bos, special-token texts become ids).
#include "engine/runtime/model_chat.h"

#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/unit/safetensors_test_util.h"

namespace spqr {
namespace {

using ::spqr::testing::TempDir;

const std::string kRoot = std::string(SPQR_SOURCE_DIR);
// A byte-level BPE with ChatML special tokens: <|endoftext|> 0, <|im_start|> 1, <|im_end|> 2.
const std::string kQwen2 = kRoot + "/tests/data/hf-tokenizers/qwen2/tokenizer.json";

std::string Slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

void Write(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
}

// A model directory with the qwen2 tokenizer.json and `config` as tokenizer_config.json.
std::unique_ptr<Tokenizer> MakeDir(const TempDir& dir, const nlohmann::json& config,
                                   std::vector<int32_t> eos_ids) {
  Write(dir.path() + "/tokenizer.json", Slurp(kQwen2));
  Write(dir.path() + "/tokenizer_config.json", config.dump());
  absl::StatusOr<std::unique_ptr<Tokenizer>> tok =
      Tokenizer::Open(dir.path() + "/tokenizer.json", -1, std::move(eos_ids));
  EXPECT_TRUE(tok.ok()) << tok.status();
  return tok.ok() ? *std::move(tok) : nullptr;
}

nlohmann::json ChatMlConfig() {
  return {{"eos_token", "<|im_end|>"},
          {"pad_token", "<|endoftext|>"},
          {"chat_template", Slurp(kRoot + "/tests/data/chat_templates/templates/smollm2.jinja")}};
}

TEST(ModelChat, ChatMlTemplateRendersAndStopsOnImEnd) {
  TempDir dir;
  std::unique_ptr<Tokenizer> tok = MakeDir(dir, ChatMlConfig(), {0});
  ASSERT_NE(tok, nullptr);
  absl::StatusOr<ModelChat> chat = LoadModelChat(dir.path(), *tok);
  ASSERT_TRUE(chat.ok()) << chat.status();
  ASSERT_TRUE(CheckChatAvailable(*chat).ok());
  // <|im_end|> is not an eos id of the model (config lists <|endoftext|> only): it joins as the
  // end-of-turn token.
  EXPECT_EQ(chat->end_of_turn_ids, std::vector<int32_t>({2}));

  const std::vector<ChatMessage> messages = {{"user", "Hi there", {}}};
  absl::StatusOr<std::vector<int32_t>> ids = ChatPromptTokens(*chat, *tok, messages, true);
  ASSERT_TRUE(ids.ok()) << ids.status();
  const std::string expected_text =
      "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
      "Face<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n";
  EXPECT_EQ(*ids, tok->Encode(expected_text, /*add_bos=*/false));
  ASSERT_FALSE(ids->empty());
  EXPECT_EQ(ids->front(), 1);  // "<|im_start|>" became its id, and nothing precedes it
}

TEST(ModelChat, EndOfTurnAlreadyAnEosIsNotRepeated) {
  TempDir dir;
  std::unique_ptr<Tokenizer> tok = MakeDir(dir, ChatMlConfig(), {0, 2});
  ASSERT_NE(tok, nullptr);
  absl::StatusOr<ModelChat> chat = LoadModelChat(dir.path(), *tok);
  ASSERT_TRUE(chat.ok()) << chat.status();
  EXPECT_TRUE(chat->end_of_turn_ids.empty());
}

TEST(ModelChat, NoTemplateIsFailedPreconditionAtChatTime) {
  TempDir dir;
  std::unique_ptr<Tokenizer> tok = MakeDir(dir, {{"eos_token", "<|im_end|>"}}, {0});
  ASSERT_NE(tok, nullptr);
  absl::StatusOr<ModelChat> chat = LoadModelChat(dir.path(), *tok);
  ASSERT_TRUE(chat.ok()) << chat.status();  // loading the model still works
  EXPECT_FALSE(chat->chat_template.has_value());
  absl::StatusOr<std::vector<int32_t>> ids =
      ChatPromptTokens(*chat, *tok, {{"user", "hi", {}}}, true);
  ASSERT_FALSE(ids.ok());
  EXPECT_EQ(ids.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(ids.status().message().find("no chat template"), std::string::npos) << ids.status();
}

TEST(ModelChat, UnsupportedConstructIsALoadErrorNamingIt) {
  TempDir dir;
  nlohmann::json config = ChatMlConfig();
  config["chat_template"] = "{% for m in messages %}{{ m.content }}{% endfor %}{% include 'x' %}";
  std::unique_ptr<Tokenizer> tok = MakeDir(dir, config, {0});
  ASSERT_NE(tok, nullptr);
  absl::StatusOr<ModelChat> chat = LoadModelChat(dir.path(), *tok);
  ASSERT_FALSE(chat.ok());
  EXPECT_EQ(chat.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(chat.status().message().find("include"), std::string::npos) << chat.status();
  EXPECT_NE(chat.status().message().find("tokenizer_config.json"), std::string::npos)
      << chat.status();
}

TEST(ModelChat, TemplateRaiseIsInvalidArgumentWithItsMessage) {
  TempDir dir;
  nlohmann::json config = ChatMlConfig();
  config["chat_template"] =
      "{% for m in messages %}{% if m.role not in ['user', 'assistant'] %}"
      "{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}"
      "{{ m.content }}{% endfor %}";
  std::unique_ptr<Tokenizer> tok = MakeDir(dir, config, {0});
  ASSERT_NE(tok, nullptr);
  absl::StatusOr<ModelChat> chat = LoadModelChat(dir.path(), *tok);
  ASSERT_TRUE(chat.ok()) << chat.status();
  absl::StatusOr<std::vector<int32_t>> ids =
      ChatPromptTokens(*chat, *tok, {{"tool", "x", {}}}, true);
  ASSERT_FALSE(ids.ok());
  EXPECT_EQ(ids.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(ids.status().message().find("Only user and assistant roles are supported!"),
            std::string::npos)
      << ids.status();
}

TEST(ModelChat, LeadingBosTextBecomesOneBosId) {
  // SentencePiece does not map the text "<s>" to the bos id; the chat prompt must still start
  // with exactly one bos.
  absl::StatusOr<std::unique_ptr<Tokenizer>> sp =
      Tokenizer::Open(kRoot + "/tests/data/test-model/tokenizer.model", -1, {});
  ASSERT_TRUE(sp.ok()) << sp.status();
  const Tokenizer& tok = **sp;
  ASSERT_GE(tok.bos_id(), 0);
  std::vector<int32_t> expected = {tok.bos_id()};
  const std::vector<int32_t> rest = tok.Encode("[INST] hi [/INST]", false);
  expected.insert(expected.end(), rest.begin(), rest.end());
  EXPECT_EQ(TokenizeChatPrompt("<s>[INST] hi [/INST]", "<s>", tok), expected);
  // A template that writes no bos gets none.
  EXPECT_EQ(TokenizeChatPrompt("[INST] hi [/INST]", "<s>", tok), rest);
}

}  // namespace
}  // namespace spqr
