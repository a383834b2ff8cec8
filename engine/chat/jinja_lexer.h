// Tokenizer for the chat-template Jinja subset, reproducing Jinja2's lexer with the settings
// transformers uses (trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=False):
// newlines normalized to "\n", one trailing newline dropped, whitespace control with '-' and '+',
// the first newline after a block or comment tag removed, and blanks before a block/comment tag
// on its own line removed. Comments produce no tokens.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace spqr::jinja {

struct Token {
  enum class Kind {
    kData,        // literal template text
    kVarBegin,    // {{
    kVarEnd,      // }}
    kBlockBegin,  // {%
    kBlockEnd,    // %}
    kName,
    kString,  // value: the literal with escapes resolved
    kInteger,
    kFloat,
    kOperator,  // value: the operator text ("+", "//", "(", ...)
    kEof,
  };
  Kind kind;
  std::string value;
  int64_t int_value = 0;
  double float_value = 0;
  int line = 1;
  int column = 1;
};

// Tokenizes `source`. Throws jinja::Error (with line/column) for unterminated tags, comments and
// strings, unbalanced brackets and characters that start no token.
std::vector<Token> Tokenize(std::string_view source);

}  // namespace spqr::jinja
