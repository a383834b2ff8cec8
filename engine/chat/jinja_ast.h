// Syntax tree of a parsed chat template (see jinja_parser.h for the accepted grammar).
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "engine/chat/jinja_value.h"

namespace spqr::jinja {

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

struct Expr {
  enum class Kind {
    kConst,     // constant
    kName,      // name
    kGetAttr,   // args[0].name
    kGetItem,   // args[0][args[1]]
    kSlice,     // args[0][args[1]:args[2]:args[3]] (null parts are omitted)
    kCall,      // args[0](args[1..], kwargs)
    kFilter,    // args[0] | name(args[1..], kwargs)
    kTest,      // args[0] is name(args[1..], kwargs)
    kNot,       // not args[0]
    kNeg,       // -args[0]
    kPos,       // +args[0]
    kBinary,    // args[0] op args[1]; op in + - * / // % **
    kConcat,    // args[0] ~ args[1] ~ ...
    kCompare,   // args[0] ops[0] args[1] ops[1] args[2] ... (chained like Python)
    kAnd,       // args[0] and args[1]
    kOr,        // args[0] or args[1]
    kCondExpr,  // args[0] if args[1] else args[2] (args[2] null: Undefined)
    kList,
    kTuple,
    kDict,  // keys args[0,2,4..], values args[1,3,5..]
  };
  Kind kind;
  int line = 0;
  int column = 0;
  std::string name;  // name / attribute / filter / test / binary operator
  Value constant;
  std::vector<ExprPtr> args;
  std::vector<std::pair<std::string, ExprPtr>> kwargs;
  std::vector<std::string> ops;  // kCompare operators: == != < <= > >= in notin
};

struct Stmt;
using StmtPtr = std::unique_ptr<Stmt>;
using Body = std::vector<StmtPtr>;

// An assignment target: one name, a tuple of names (unpacking), or namespace.attr.
struct Target {
  std::vector<std::string> names;  // several: unpack a sequence
  std::string attr;                // non-empty: names[0].attr (namespace attribute)
};

struct MacroParam {
  std::string name;
  ExprPtr default_value;  // null: required
};

struct Stmt {
  enum class Kind {
    kText,      // text
    kOutput,    // {{ expr }}
    kIf,        // branches (cond, body)...; else_body
    kFor,       // for target in expr [if cond]: body, else_body
    kSet,       // set target = expr
    kSetBlock,  // set target %} body {% endset
    kMacro,     // macro name(params): body
    kBreak,
    kContinue,
    kGeneration,  // transformers' {% generation %} marker: renders body unchanged
  };
  Kind kind;
  int line = 0;
  int column = 0;
  std::string text;  // kText; kMacro: the macro's name
  ExprPtr expr;      // kOutput / kSet value / kFor iterable
  ExprPtr cond;      // kFor filter
  Target target;
  std::vector<std::pair<ExprPtr, Body>> branches;
  Body body;
  Body else_body;
  std::vector<MacroParam> params;
};

}  // namespace spqr::jinja
