#include "engine/chat/jinja_lexer.h"

#include <algorithm>
#include <cctype>

#include "engine/chat/jinja_text.h"
#include "engine/chat/jinja_value.h"
#include "engine/tokenizer/utf8.h"

namespace spqr::jinja {
namespace {

bool IsSpace(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}
bool IsDigit(char c) { return c >= '0' && c <= '9'; }
bool IsNameStart(char c) { return std::isalpha(static_cast<unsigned char>(c)) || c == '_'; }
bool IsNameChar(char c) { return IsNameStart(c) || IsDigit(c); }

// "\r\n" and "\r" become "\n"; one trailing newline is dropped (keep_trailing_newline=False).
std::string Preprocess(std::string_view src) {
  std::string out;
  out.reserve(src.size());
  for (size_t i = 0; i < src.size(); ++i) {
    if (src[i] == '\r') {
      out.push_back('\n');
      if (i + 1 < src.size() && src[i + 1] == '\n') ++i;
    } else {
      out.push_back(src[i]);
    }
  }
  if (!out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

class Lexer {
 public:
  explicit Lexer(std::string source) : src_(std::move(source)) {
    for (size_t i = 0; i < src_.size(); ++i) {
      if (src_[i] == '\n') line_starts_.push_back(i + 1);
    }
  }

  std::vector<Token> Run() {
    size_t pos = 0;
    bool line_starting = true;
    while (pos < src_.size()) {
      const size_t open = FindOpener(pos);
      if (open == std::string::npos) {
        Emit(Token::Kind::kData, src_.substr(pos), pos);
        break;
      }
      const char type = src_[open + 1];  // '{', '%' or '#'
      size_t after = open + 2;
      char sign = 0;
      if (after < src_.size() && (src_[after] == '-' || src_[after] == '+')) sign = src_[after++];
      std::string text = src_.substr(pos, open - pos);
      if (sign == '-') {
        // Strip all whitespace between the text and the tag.
        size_t end = text.size();
        while (end > 0 && IsSpace(text[end - 1])) --end;
        text.resize(end);
      } else if (sign != '+' && type != '{') {
        // lstrip_blocks: blanks between the line start and a block/comment tag go.
        const size_t nl = text.rfind('\n');
        const size_t l_pos = nl == std::string::npos ? 0 : nl + 1;
        if (l_pos > 0 || line_starting) {
          bool blank = l_pos < text.size();
          for (size_t i = l_pos; i < text.size(); ++i) blank = blank && IsSpace(text[i]);
          if (blank) text.resize(l_pos);
        }
      }
      Emit(Token::Kind::kData, text, pos);
      if (type == '#') {
        pos = SkipComment(open, after);
      } else {
        pos = LexTag(open, after, type == '%');
      }
      line_starting = pos > 0 && src_[pos - 1] == '\n';
    }
    Emit(Token::Kind::kEof, "", src_.size());
    return std::move(tokens_);
  }

 private:
  size_t FindOpener(size_t pos) const {
    size_t i = src_.find('{', pos);
    while (i != std::string::npos && i + 1 < src_.size()) {
      const char c = src_[i + 1];
      if (c == '{' || c == '%' || c == '#') return i;
      i = src_.find('{', i + 1);
    }
    return std::string::npos;
  }

  void Position(size_t pos, int* line, int* column) const {
    auto it = std::upper_bound(line_starts_.begin(), line_starts_.end(), pos);
    *line = static_cast<int>(it - line_starts_.begin()) + 1;
    *column = static_cast<int>(pos - (it == line_starts_.begin() ? 0 : *(it - 1))) + 1;
  }

  [[noreturn]] void Fail(const std::string& message, size_t pos) const {
    int line, column;
    Position(pos, &line, &column);
    throw Error(message, line, column);
  }

  Token& Emit(Token::Kind kind, std::string value, size_t pos) {
    if (kind == Token::Kind::kData && value.empty()) {
      static Token dummy;
      return dummy;
    }
    Token t;
    t.kind = kind;
    t.value = std::move(value);
    Position(pos, &t.line, &t.column);
    tokens_.push_back(std::move(t));
    return tokens_.back();
  }

  // Consumes a tag ending at `end_pos` (index of the closing delimiter's first char) and what
  // trim_blocks / '-' remove after it; returns the position after.
  size_t AfterTagEnd(size_t end_pos, char sign, bool trim_newline) {
    size_t p = end_pos + 2;
    if (sign == '-') {
      while (p < src_.size() && IsSpace(src_[p])) ++p;
    } else if (sign != '+' && trim_newline && p < src_.size() && src_[p] == '\n') {
      ++p;
    }
    return p;
  }

  size_t SkipComment(size_t open, size_t body) {
    const size_t end = src_.find("#}", body);
    if (end == std::string::npos) Fail("missing end of comment tag", open);
    char sign = 0;
    if (end > body && (src_[end - 1] == '-' || src_[end - 1] == '+')) sign = src_[end - 1];
    return AfterTagEnd(end, sign, /*trim_newline=*/true);
  }

  size_t LexTag(size_t open, size_t pos, bool block) {
    Emit(block ? Token::Kind::kBlockBegin : Token::Kind::kVarBegin, "", open);
    const char close = block ? '%' : '}';
    std::vector<char> balance;
    while (true) {
      if (pos >= src_.size()) {
        Fail(block ? "unexpected end of template: missing '%}'"
                   : "unexpected end of template: "
                     "missing '}}'",
             open);
      }
      if (balance.empty()) {
        // End of tag: "-%}" strips whitespace after; "+%}" keeps the newline; "%}" drops one.
        char sign = 0;
        size_t end = pos;
        if ((src_[pos] == '-' || (block && src_[pos] == '+')) &&
            src_.compare(pos + 1, 2, std::string{close, '}'}) == 0) {
          sign = src_[pos];
          end = pos + 1;
        }
        if (src_.compare(end, 2, std::string{close, '}'}) == 0) {
          Emit(block ? Token::Kind::kBlockEnd : Token::Kind::kVarEnd, "", pos);
          return AfterTagEnd(end, sign, /*trim_newline=*/block);
        }
      }
      const char c = src_[pos];
      if (IsSpace(c)) {
        ++pos;
      } else if (IsDigit(c)) {
        pos = LexNumber(pos);
      } else if (IsNameStart(c)) {
        size_t e = pos;
        while (e < src_.size() && IsNameChar(src_[e])) ++e;
        Emit(Token::Kind::kName, src_.substr(pos, e - pos), pos);
        pos = e;
      } else if (c == '\'' || c == '"') {
        pos = LexString(pos);
      } else {
        pos = LexOperator(pos, &balance);
      }
    }
  }

  size_t LexNumber(size_t pos) {
    auto digits = [&](size_t p) {  // (\d+_)*\d+ ; returns end or p when none
      size_t e = p;
      while (e < src_.size() &&
             (IsDigit(src_[e]) ||
              (src_[e] == '_' && e > p && e + 1 < src_.size() && IsDigit(src_[e + 1])))) {
        ++e;
      }
      return e;
    };
    size_t e = digits(pos);
    bool is_float = false;
    if (e + 1 < src_.size() && src_[e] == '.' && IsDigit(src_[e + 1])) {
      e = digits(e + 1);
      is_float = true;
    }
    if (e < src_.size() && (src_[e] == 'e' || src_[e] == 'E')) {
      size_t x = e + 1;
      if (x < src_.size() && (src_[x] == '+' || src_[x] == '-')) ++x;
      if (x < src_.size() && IsDigit(src_[x])) {
        e = digits(x);
        is_float = true;
      }
    }
    std::string text;
    for (size_t i = pos; i < e; ++i) {
      if (src_[i] != '_') text.push_back(src_[i]);
    }
    if (!is_float && (text.size() > 1 && text[0] == '0') &&
        (e < src_.size() && std::isalpha(static_cast<unsigned char>(src_[e])))) {
      Fail("binary, octal and hexadecimal integer literals are not supported", pos);
    }
    Token& t = Emit(is_float ? Token::Kind::kFloat : Token::Kind::kInteger, text, pos);
    try {
      if (is_float) {
        t.float_value = std::stod(text);
      } else {
        t.int_value = std::stoll(text);
      }
    } catch (const std::exception&) {
      Fail("number literal out of range: " + text, pos);
    }
    return e;
  }

  size_t LexString(size_t pos) {
    const char quote = src_[pos];
    std::string value;
    size_t p = pos + 1;
    while (true) {
      if (p >= src_.size()) Fail("unterminated string literal", pos);
      const char c = src_[p];
      if (c == quote) break;
      if (c != '\\') {
        value.push_back(c);
        ++p;
        continue;
      }
      if (p + 1 >= src_.size()) Fail("unterminated string literal", pos);
      const char e = src_[p + 1];
      p += 2;
      auto hex = [&](int n) {
        uint32_t v = 0;
        for (int k = 0; k < n; ++k, ++p) {
          if (p >= src_.size() || !std::isxdigit(static_cast<unsigned char>(src_[p]))) {
            Fail("truncated \\x/\\u/\\U escape in string literal", pos);
          }
          v = v * 16 + static_cast<uint32_t>(std::stoi(std::string(1, src_[p]), nullptr, 16));
        }
        return v;
      };
      switch (e) {
        case '\n':
          break;  // line continuation
        case '\\':
        case '\'':
        case '"':
          value.push_back(e);
          break;
        case 'a':
          value.push_back('\a');
          break;
        case 'b':
          value.push_back('\b');
          break;
        case 'f':
          value.push_back('\f');
          break;
        case 'n':
          value.push_back('\n');
          break;
        case 'r':
          value.push_back('\r');
          break;
        case 't':
          value.push_back('\t');
          break;
        case 'v':
          value.push_back('\v');
          break;
        case 'x':
          utf8::Append(hex(2), &value);
          break;
        case 'u':
          utf8::Append(hex(4), &value);
          break;
        case 'U': {
          const uint32_t cp = hex(8);
          if (cp > 0x10FFFF) Fail("\\U escape out of range in string literal", pos);
          utf8::Append(cp, &value);
          break;
        }
        case 'N':
          Fail("\\N{...} escapes are not supported in string literals", pos);
        default:
          if (e >= '0' && e <= '7') {
            uint32_t v = static_cast<uint32_t>(e - '0');
            for (int k = 0; k < 2 && p < src_.size() && src_[p] >= '0' && src_[p] <= '7'; ++k) {
              v = v * 8 + static_cast<uint32_t>(src_[p++] - '0');
            }
            utf8::Append(v, &value);
          } else {
            value.push_back('\\');  // unknown escapes stay as written
            value.push_back(e);
          }
      }
    }
    Emit(Token::Kind::kString, value, pos);
    return p + 1;
  }

  size_t LexOperator(size_t pos, std::vector<char>* balance) {
    static const char* kTwo[] = {"//", "**", "==", "!=", ">=", "<="};
    for (const char* op : kTwo) {
      if (src_.compare(pos, 2, op) == 0) {
        Emit(Token::Kind::kOperator, op, pos);
        return pos + 2;
      }
    }
    const char c = src_[pos];
    static const std::string kOne = "+-/*%~[](){}><=.:|,;";
    if (kOne.find(c) == std::string::npos) {
      Fail(std::string("unexpected character '") + c + "'", pos);
    }
    if (c == '(' || c == '[' || c == '{') {
      balance->push_back(c == '(' ? ')' : c == '[' ? ']' : '}');
    } else if (c == ')' || c == ']' || c == '}') {
      if (balance->empty()) Fail(std::string("unexpected '") + c + "'", pos);
      if (balance->back() != c) {
        Fail(std::string("unexpected '") + c + "', expected '" + balance->back() + "'", pos);
      }
      balance->pop_back();
    }
    Emit(Token::Kind::kOperator, std::string(1, c), pos);
    return pos + 1;
  }

  std::string src_;
  std::vector<size_t> line_starts_;
  std::vector<Token> tokens_;
};

}  // namespace

std::vector<Token> Tokenize(std::string_view source) { return Lexer(Preprocess(source)).Run(); }

}  // namespace spqr::jinja
