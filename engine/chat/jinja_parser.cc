#include "engine/chat/jinja_parser.h"

#include <set>

#include "engine/chat/jinja_lexer.h"

namespace spqr::jinja {
namespace {

using K = Token::Kind;

// Tags Jinja2 knows that this engine does not implement, reported by name.
const std::set<std::string, std::less<>> kKnownUnsupportedTags = {
    "include", "extends", "block",      "import", "from",  "raw",       "with",
    "filter",  "call",    "autoescape", "do",     "trans", "pluralize", "debug"};

class Parser {
 public:
  explicit Parser(std::vector<Token> tokens) : toks_(std::move(tokens)) {}

  Template Run() {
    Template t;
    std::string end;
    t.body = ParseBody({}, &end);
    for (const auto& call : global_calls_) {
      if (!IsSupportedGlobalFunction(call.first->name) && !macros_.count(call.first->name)) {
        Fail("unsupported function '" + call.first->name +
                 "' (not a builtin or a macro of this "
                 "template)",
             call.second);
      }
    }
    return t;
  }

 private:
  const Token& Cur() const { return toks_[pos_]; }
  const Token& Peek(size_t n = 1) const { return toks_[std::min(pos_ + n, toks_.size() - 1)]; }
  const Token& Next() { return toks_[pos_ < toks_.size() - 1 ? pos_++ : pos_]; }
  bool IsOp(const char* op) const { return Cur().kind == K::kOperator && Cur().value == op; }
  bool IsName(const char* name) const { return Cur().kind == K::kName && Cur().value == name; }

  [[noreturn]] void Fail(const std::string& message, const Token& at) const {
    throw Error(message, at.line, at.column);
  }
  static std::string Describe(const Token& t) {
    switch (t.kind) {
      case K::kData:
        return "template data";
      case K::kVarBegin:
        return "'{{'";
      case K::kVarEnd:
        return "'}}'";
      case K::kBlockBegin:
        return "'{%'";
      case K::kBlockEnd:
        return "end of statement block";
      case K::kEof:
        return "end of template";
      case K::kString:
        return "string literal";
      default:
        return "'" + t.value + "'";
    }
  }
  void ExpectOp(const char* op) {
    if (!IsOp(op)) Fail(std::string("expected '") + op + "', got " + Describe(Cur()), Cur());
    Next();
  }
  std::string ExpectName() {
    if (Cur().kind != K::kName) Fail("expected a name, got " + Describe(Cur()), Cur());
    return Next().value;
  }
  void ExpectBlockEnd() {
    if (Cur().kind != K::kBlockEnd)
      Fail("expected end of statement block, got " + Describe(Cur()), Cur());
    Next();
  }

  ExprPtr NewExpr(Expr::Kind kind, const Token& at) {
    auto e = std::make_unique<Expr>();
    e->kind = kind;
    e->line = at.line;
    e->column = at.column;
    return e;
  }

  // Parses statements until a block tag whose name is in `ends`; leaves the stream at that name
  // and stores it in *end. With `ends` empty, parses to the end of the template.
  Body ParseBody(const std::set<std::string>& ends, std::string* end) {
    DepthGuard guard(this);
    Body body;
    while (true) {
      const Token& t = Cur();
      if (t.kind == K::kEof) {
        if (!ends.empty()) {
          std::string list;
          for (const auto& e : ends) list += (list.empty() ? "'" : " or '") + e + "'";
          Fail("unexpected end of template: expected " + list, t);
        }
        return body;
      }
      if (t.kind == K::kData) {
        auto s = NewStmt(Stmt::Kind::kText, t);
        s->text = t.value;
        Next();
        body.push_back(std::move(s));
      } else if (t.kind == K::kVarBegin) {
        auto s = NewStmt(Stmt::Kind::kOutput, t);
        Next();
        s->expr = ParseTuple(true, {});
        if (Cur().kind != K::kVarEnd) Fail("expected '}}', got " + Describe(Cur()), Cur());
        Next();
        body.push_back(std::move(s));
      } else if (t.kind == K::kBlockBegin) {
        Next();
        if (Cur().kind == K::kName && ends.count(Cur().value)) {
          *end = Cur().value;
          return body;
        }
        body.push_back(ParseStatement(t));
      } else {
        Fail("unexpected " + Describe(t), t);
      }
    }
  }

  StmtPtr NewStmt(Stmt::Kind kind, const Token& at) {
    auto s = std::make_unique<Stmt>();
    s->kind = kind;
    s->line = at.line;
    s->column = at.column;
    return s;
  }

  StmtPtr ParseStatement(const Token& open) {
    const Token& t = Cur();
    if (t.kind != K::kName) Fail("expected a statement name after '{%', got " + Describe(t), t);
    const std::string& name = t.value;
    if (name == "if") return ParseIf();
    if (name == "for") return ParseFor();
    if (name == "set") return ParseSet();
    if (name == "macro") return ParseMacro();
    if (name == "break" || name == "continue") {
      if (loop_depth_ == 0) Fail("'" + name + "' outside of a for loop", t);
      auto s = NewStmt(name == "break" ? Stmt::Kind::kBreak : Stmt::Kind::kContinue, t);
      Next();
      ExpectBlockEnd();
      return s;
    }
    if (name == "generation") {
      auto s = NewStmt(Stmt::Kind::kGeneration, t);
      Next();
      ExpectBlockEnd();
      std::string end;
      s->body = ParseBody({"endgeneration"}, &end);
      Next();
      ExpectBlockEnd();
      return s;
    }
    if (kKnownUnsupportedTags.count(name)) {
      Fail("unsupported Jinja construct '{% " + name + " %}'", t);
    }
    Fail("unknown tag '" + name + "'", t);
  }

  StmtPtr ParseIf() {
    auto s = NewStmt(Stmt::Kind::kIf, Cur());
    Next();
    while (true) {
      ExprPtr cond = ParseTuple(true, {});
      ExpectBlockEnd();
      std::string end;
      Body body = ParseBody({"elif", "else", "endif"}, &end);
      s->branches.emplace_back(std::move(cond), std::move(body));
      Next();
      if (end == "elif") continue;
      if (end == "else") {
        ExpectBlockEnd();
        s->else_body = ParseBody({"endif"}, &end);
        Next();
      }
      ExpectBlockEnd();
      return s;
    }
  }

  Target ParseTarget(bool allow_namespace) {
    Target target;
    const bool paren = IsOp("(");
    if (paren) Next();
    const Token& first = Cur();
    target.names.push_back(ExpectName());
    if (allow_namespace && IsOp(".")) {
      Next();
      target.attr = ExpectName();
      return target;
    }
    while (IsOp(",")) {
      Next();
      if (Cur().kind != K::kName) break;  // trailing comma
      target.names.push_back(ExpectName());
    }
    if (paren) ExpectOp(")");
    for (const auto& n : target.names) {
      if (n == "true" || n == "false" || n == "none" || n == "True" || n == "False" ||
          n == "None" || n == "loop") {
        Fail("cannot assign to '" + n + "'", first);
      }
    }
    return target;
  }

  StmtPtr ParseFor() {
    auto s = NewStmt(Stmt::Kind::kFor, Cur());
    Next();
    s->target = ParseTarget(false);
    if (!IsName("in")) Fail("expected 'in' in for loop, got " + Describe(Cur()), Cur());
    Next();
    s->expr = ParseTuple(false, {"recursive"});
    if (IsName("if")) {
      Next();
      s->cond = ParseExpression(true);
    }
    if (IsName("recursive")) Fail("unsupported Jinja construct: recursive for loop", Cur());
    ExpectBlockEnd();
    ++loop_depth_;
    std::string end;
    s->body = ParseBody({"else", "endfor"}, &end);
    --loop_depth_;
    Next();
    if (end == "else") {
      ExpectBlockEnd();
      s->else_body = ParseBody({"endfor"}, &end);
      Next();
    }
    ExpectBlockEnd();
    return s;
  }

  StmtPtr ParseSet() {
    const Token& at = Cur();
    Next();
    Target target = ParseTarget(true);
    if (IsOp("=")) {
      auto s = NewStmt(Stmt::Kind::kSet, at);
      s->target = std::move(target);
      Next();
      s->expr = ParseTuple(true, {});
      ExpectBlockEnd();
      return s;
    }
    auto s = NewStmt(Stmt::Kind::kSetBlock, at);
    s->target = std::move(target);
    if (IsOp("|")) Fail("unsupported Jinja construct: filtered set block", Cur());
    ExpectBlockEnd();
    std::string end;
    s->body = ParseBody({"endset"}, &end);
    Next();
    ExpectBlockEnd();
    return s;
  }

  StmtPtr ParseMacro() {
    auto s = NewStmt(Stmt::Kind::kMacro, Cur());
    Next();
    s->text = ExpectName();
    macros_.insert(s->text);
    ExpectOp("(");
    while (!IsOp(")")) {
      if (!s->params.empty()) ExpectOp(",");
      if (IsOp(")")) break;
      MacroParam p;
      p.name = ExpectName();
      if (IsOp("=")) {
        Next();
        p.default_value = ParseExpression(true);
      }
      s->params.push_back(std::move(p));
    }
    Next();
    ExpectBlockEnd();
    std::string end;
    const int saved_depth = loop_depth_;
    loop_depth_ = 0;
    s->body = ParseBody({"endmacro"}, &end);
    loop_depth_ = saved_depth;
    Next();
    if (Cur().kind == K::kName) Next();  // {% endmacro name %}
    ExpectBlockEnd();
    return s;
  }

  bool AtTupleEnd(const std::set<std::string>& extra_end) const {
    const Token& t = Cur();
    if (t.kind == K::kVarEnd || t.kind == K::kBlockEnd || t.kind == K::kEof) return true;
    if (t.kind == K::kOperator && (t.value == ")")) return true;
    return t.kind == K::kName && extra_end.count(t.value);
  }

  // Jinja's parse_tuple: one expression, or a tuple when commas follow.
  ExprPtr ParseTuple(bool with_condexpr, const std::set<std::string>& extra_end,
                     bool explicit_parens = false) {
    const Token& at = Cur();
    std::vector<ExprPtr> items;
    bool is_tuple = false;
    while (true) {
      if (!items.empty()) ExpectOp(",");
      if (AtTupleEnd(extra_end)) break;
      items.push_back(with_condexpr ? ParseExpression(true) : ParseOr());
      if (IsOp(",")) {
        is_tuple = true;
      } else {
        break;
      }
    }
    if (!is_tuple) {
      if (!items.empty()) return std::move(items[0]);
      if (!explicit_parens) Fail("expected an expression, got " + Describe(Cur()), Cur());
    }
    auto e = NewExpr(Expr::Kind::kTuple, at);
    e->args = std::move(items);
    return e;
  }

  ExprPtr ParseExpression(bool with_condexpr) {
    if (!with_condexpr) return ParseOr();
    const Token& at = Cur();
    ExprPtr expr = ParseOr();
    while (IsName("if")) {
      Next();
      auto e = NewExpr(Expr::Kind::kCondExpr, at);
      ExprPtr cond = ParseOr();
      ExprPtr other;
      if (IsName("else")) {
        Next();
        other = ParseExpression(true);
      }
      e->args.push_back(std::move(expr));
      e->args.push_back(std::move(cond));
      e->args.push_back(std::move(other));
      expr = std::move(e);
    }
    return expr;
  }

  ExprPtr Binary(Expr::Kind kind, const Token& at, ExprPtr a, ExprPtr b, std::string op = "") {
    auto e = NewExpr(kind, at);
    e->name = std::move(op);
    e->args.push_back(std::move(a));
    e->args.push_back(std::move(b));
    return e;
  }

  ExprPtr ParseOr() {
    ExprPtr left = ParseAnd();
    while (IsName("or")) {
      const Token& at = Next();
      left = Binary(Expr::Kind::kOr, at, std::move(left), ParseAnd());
    }
    return left;
  }
  ExprPtr ParseAnd() {
    ExprPtr left = ParseNot();
    while (IsName("and")) {
      const Token& at = Next();
      left = Binary(Expr::Kind::kAnd, at, std::move(left), ParseNot());
    }
    return left;
  }
  // Bounds the parser's (and so the evaluator's) recursion on hostile input.
  struct DepthGuard {
    DepthGuard(Parser* p) : p(p) {
      if (++p->depth_ > kMaxDepth) p->Fail("template nesting too deep", p->Cur());
    }
    ~DepthGuard() { --p->depth_; }
    Parser* p;
  };
  static constexpr int kMaxDepth = 200;

  ExprPtr ParseNot() {
    DepthGuard guard(this);
    if (IsName("not")) {
      auto e = NewExpr(Expr::Kind::kNot, Next());
      e->args.push_back(ParseNot());
      return e;
    }
    return ParseCompare();
  }
  ExprPtr ParseCompare() {
    const Token& at = Cur();
    ExprPtr first = ParseMath1();
    std::unique_ptr<Expr> cmp;
    while (true) {
      std::string op;
      if (Cur().kind == K::kOperator &&
          (Cur().value == "==" || Cur().value == "!=" || Cur().value == "<" ||
           Cur().value == "<=" || Cur().value == ">" || Cur().value == ">=")) {
        op = Next().value;
      } else if (IsName("in")) {
        Next();
        op = "in";
      } else if (IsName("not") && Peek().kind == K::kName && Peek().value == "in") {
        Next();
        Next();
        op = "notin";
      } else {
        break;
      }
      if (!cmp) {
        cmp = NewExpr(Expr::Kind::kCompare, at);
        cmp->args.push_back(std::move(first));
      }
      cmp->ops.push_back(op);
      cmp->args.push_back(ParseMath1());
    }
    return cmp ? std::move(cmp) : std::move(first);
  }
  ExprPtr ParseMath1() {
    ExprPtr left = ParseConcat();
    while (IsOp("+") || IsOp("-")) {
      const Token& at = Next();
      left = Binary(Expr::Kind::kBinary, at, std::move(left), ParseConcat(), at.value);
    }
    return left;
  }
  ExprPtr ParseConcat() {
    const Token& at = Cur();
    ExprPtr first = ParseMath2();
    if (!IsOp("~")) return first;
    auto e = NewExpr(Expr::Kind::kConcat, at);
    e->args.push_back(std::move(first));
    while (IsOp("~")) {
      Next();
      e->args.push_back(ParseMath2());
    }
    return e;
  }
  ExprPtr ParseMath2() {
    ExprPtr left = ParsePow();
    while (IsOp("*") || IsOp("/") || IsOp("//") || IsOp("%")) {
      const Token& at = Next();
      left = Binary(Expr::Kind::kBinary, at, std::move(left), ParsePow(), at.value);
    }
    return left;
  }
  ExprPtr ParsePow() {
    ExprPtr left = ParseUnary(true);
    while (IsOp("**")) {
      const Token& at = Next();
      left = Binary(Expr::Kind::kBinary, at, std::move(left), ParseUnary(true), "**");
    }
    return left;
  }
  ExprPtr ParseUnary(bool with_filter) {
    DepthGuard guard(this);
    ExprPtr node;
    if (IsOp("-") || IsOp("+")) {
      const Token& at = Next();
      node = NewExpr(at.value == "-" ? Expr::Kind::kNeg : Expr::Kind::kPos, at);
      node->args.push_back(ParseUnary(false));
    } else {
      node = ParsePrimary();
    }
    node = ParsePostfix(std::move(node));
    if (with_filter) node = ParseFilterExpr(std::move(node));
    return node;
  }

  ExprPtr ParsePrimary() {
    const Token& t = Cur();
    if (t.kind == K::kName) {
      Next();
      if (t.value == "true" || t.value == "True" || t.value == "false" || t.value == "False") {
        auto e = NewExpr(Expr::Kind::kConst, t);
        e->constant = Value(t.value == "true" || t.value == "True");
        return e;
      }
      if (t.value == "none" || t.value == "None") {
        auto e = NewExpr(Expr::Kind::kConst, t);
        e->constant = Value::None();
        return e;
      }
      auto e = NewExpr(Expr::Kind::kName, t);
      e->name = t.value;
      return e;
    }
    if (t.kind == K::kString) {
      std::string s;
      while (Cur().kind == K::kString) s += Next().value;  // adjacent literals concatenate
      auto e = NewExpr(Expr::Kind::kConst, t);
      e->constant = Value(std::move(s));
      return e;
    }
    if (t.kind == K::kInteger || t.kind == K::kFloat) {
      Next();
      auto e = NewExpr(Expr::Kind::kConst, t);
      e->constant = t.kind == K::kInteger ? Value(t.int_value) : Value(t.float_value);
      return e;
    }
    if (IsOp("(")) {
      Next();
      ExprPtr e = ParseTuple(true, {}, /*explicit_parens=*/true);
      ExpectOp(")");
      return e;
    }
    if (IsOp("[")) {
      auto e = NewExpr(Expr::Kind::kList, Next());
      while (!IsOp("]")) {
        if (!e->args.empty()) ExpectOp(",");
        if (IsOp("]")) break;
        e->args.push_back(ParseExpression(true));
      }
      Next();
      return e;
    }
    if (IsOp("{")) {
      auto e = NewExpr(Expr::Kind::kDict, Next());
      while (!IsOp("}")) {
        if (!e->args.empty()) ExpectOp(",");
        if (IsOp("}")) break;
        e->args.push_back(ParseExpression(true));
        ExpectOp(":");
        e->args.push_back(ParseExpression(true));
      }
      Next();
      return e;
    }
    Fail("unexpected " + Describe(t), t);
  }

  ExprPtr ParsePostfix(ExprPtr node) {
    while (true) {
      if (IsOp(".")) {
        const Token& at = Next();
        const Token& attr = Cur();
        if (attr.kind == K::kName) {
          Next();
          auto e = NewExpr(Expr::Kind::kGetAttr, at);
          e->name = attr.value;
          e->args.push_back(std::move(node));
          node = std::move(e);
        } else if (attr.kind == K::kInteger) {
          Next();
          auto e = NewExpr(Expr::Kind::kGetItem, at);
          e->args.push_back(std::move(node));
          auto idx = NewExpr(Expr::Kind::kConst, attr);
          idx->constant = Value(attr.int_value);
          e->args.push_back(std::move(idx));
          node = std::move(e);
        } else {
          Fail("expected name or number after '.'", attr);
        }
      } else if (IsOp("[")) {
        node = ParseSubscript(std::move(node));
      } else if (IsOp("(")) {
        node = ParseCall(std::move(node));
      } else {
        return node;
      }
    }
  }

  ExprPtr ParseSubscript(ExprPtr node) {
    const Token& at = Next();  // '['
    std::vector<ExprPtr> parts(3);
    bool slice = false;
    int part = 0;
    while (!IsOp("]")) {
      if (IsOp(":")) {
        Next();
        slice = true;
        if (++part > 2) Fail("too many ':' in slice", at);
        continue;
      }
      if (IsOp(",")) Fail("unsupported Jinja construct: tuple subscript", Cur());
      if (parts[part]) Fail("expected ']' or ':' in subscript", Cur());
      parts[part] = ParseExpression(true);
    }
    Next();
    auto e = NewExpr(slice ? Expr::Kind::kSlice : Expr::Kind::kGetItem, at);
    e->args.push_back(std::move(node));
    if (!slice) {
      if (!parts[0]) Fail("empty subscript", at);
      e->args.push_back(std::move(parts[0]));
    } else {
      for (auto& p : parts) e->args.push_back(std::move(p));
    }
    return e;
  }

  void ParseCallArgs(Expr* e) {
    ExpectOp("(");
    while (!IsOp(")")) {
      if (e->args.size() > 1 || !e->kwargs.empty()) ExpectOp(",");
      if (IsOp(")")) break;
      if (IsOp("*") || IsOp("**"))
        Fail("unsupported Jinja construct: *args/**kwargs in call", Cur());
      if (Cur().kind == K::kName && Peek().kind == K::kOperator && Peek().value == "=") {
        std::string key = Next().value;
        Next();
        e->kwargs.emplace_back(key, ParseExpression(true));
      } else {
        if (!e->kwargs.empty()) Fail("positional argument follows keyword argument", Cur());
        e->args.push_back(ParseExpression(true));
      }
    }
    Next();
  }

  ExprPtr ParseCall(ExprPtr node) {
    const Token& at = Cur();
    if (node->kind == Expr::Kind::kGetAttr && !IsSupportedMethod(node->name)) {
      Fail("unsupported method '" + node->name + "()'", at);
    }
    const bool global = node->kind == Expr::Kind::kName;
    auto e = NewExpr(Expr::Kind::kCall, at);
    if (global) global_calls_.emplace_back(node.get(), at);
    e->args.push_back(std::move(node));
    ParseCallArgs(e.get());
    return e;
  }

  ExprPtr ParseFilterExpr(ExprPtr node) {
    while (true) {
      if (IsOp("|")) {
        Next();
        const Token& at = Cur();
        std::string name = ExpectName();
        if (!IsSupportedFilter(name)) Fail("unsupported filter '" + name + "'", at);
        auto e = NewExpr(Expr::Kind::kFilter, at);
        e->name = name;
        e->args.push_back(std::move(node));
        if (IsOp("(")) ParseCallArgs(e.get());
        node = std::move(e);
      } else if (IsName("is")) {
        Next();
        bool negated = false;
        if (IsName("not")) {
          Next();
          negated = true;
        }
        const Token& at = Cur();
        std::string name = ExpectName();
        if (!IsSupportedTest(name)) Fail("unsupported test '" + name + "'", at);
        auto e = NewExpr(Expr::Kind::kTest, at);
        e->name = name;
        e->args.push_back(std::move(node));
        if (IsOp("(")) {
          ParseCallArgs(e.get());
        } else if ((Cur().kind == K::kName || Cur().kind == K::kString ||
                    Cur().kind == K::kInteger || Cur().kind == K::kFloat || IsOp("(") ||
                    IsOp("[") || IsOp("{")) &&
                   !IsName("else") && !IsName("or") && !IsName("and")) {
          if (IsName("is")) Fail("You cannot chain multiple tests with is", Cur());
          e->args.push_back(ParsePostfix(ParsePrimary()));
        }
        node = std::move(e);
        if (negated) {
          auto n = NewExpr(Expr::Kind::kNot, at);
          n->args.push_back(std::move(node));
          node = std::move(n);
        }
      } else if (IsOp("(")) {
        node = ParseCall(std::move(node));
      } else {
        return node;
      }
    }
  }

  std::vector<Token> toks_;
  size_t pos_ = 0;
  int loop_depth_ = 0;
  int depth_ = 0;
  std::set<std::string> macros_;
  std::vector<std::pair<const Expr*, Token>> global_calls_;
};

}  // namespace

Template ParseTemplate(std::string_view source) { return Parser(Tokenize(source)).Run(); }

}  // namespace spqr::jinja
