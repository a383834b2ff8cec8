// A model's chat setup, loaded with the model: its parsed chat template (engine/chat), the special
// tokens the template sees, the end-of-turn tokens chat generation stops on, and the conversion of
// a conversation into prompt token ids.
//
// Tokenizing the rendered prompt follows transformers' apply_chat_template(tokenize=True), which
// encodes with add_special_tokens=False: the template writes every special token it wants
// (bos_token, "<|im_start|>", ...), and the tokenizer maps their texts to ids. A SentencePiece
// tokenizer does not map the text "<s>" to the bos id, so a leading bos text is turned into the bos
// id here for every tokenizer kind; no second bos is ever added.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/chat/chat_template.h"
#include "engine/tokenizer/tokenizer.h"

namespace spqr {

struct ModelChat {
  // Set when the model directory has a chat template (parsed at load).
  std::optional<ChatTemplate> chat_template;
  // Where it came from and the special tokens of tokenizer_config.json (bos_token, eos_token, ...).
  ModelChatTemplate info;
  // Without a template: why (LoadModelChatTemplate's NotFound message), for the refusal.
  std::string missing_reason;
  // Token ids that end an assistant turn besides the tokenizer's eos ids: tokenizer_config.json's
  // eos_token when it encodes to exactly one id that is not already an eos id (ChatML models'
  // "<|im_end|>" when config.json / generation_config.json list only "<|endoftext|>").
  std::vector<int32_t> end_of_turn_ids;
};

// Loads the chat template of `dir` (LoadModelChatTemplate) and parses it. A directory without one
// gives a ModelChat without a template (missing_reason set); a malformed file or a template that
// does not parse (an unsupported construct) is an error naming the file and the construct.
absl::StatusOr<ModelChat> LoadModelChat(const std::string& dir, const Tokenizer& tokenizer);

// OK when the model has a chat template; FailedPrecondition naming why not otherwise.
absl::Status CheckChatAvailable(const ModelChat& chat);

// Renders `messages` with the model's template and tokenizes the result (see the file comment).
// FailedPrecondition when the model has no template (naming why); InvalidArgument when the
// template refuses the messages or fails (its message) or the prompt tokenizes to nothing.
absl::StatusOr<std::vector<int32_t>> ChatPromptTokens(const ModelChat& chat,
                                                      const Tokenizer& tokenizer,
                                                      const std::vector<ChatMessage>& messages,
                                                      bool add_generation_prompt);

// The tokens of an already rendered chat prompt: a leading bos text becomes the bos id (when the
// tokenizer has one), the rest is encoded without adding special tokens.
std::vector<int32_t> TokenizeChatPrompt(const std::string& prompt, const std::string& bos_text,
                                        const Tokenizer& tokenizer);

}  // namespace spqr
