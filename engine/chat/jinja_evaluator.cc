#include "engine/chat/jinja_evaluator.h"

#include <unordered_map>

namespace spqr::jinja {
namespace {

struct Frame {
  const Frame* parent = nullptr;
  std::unordered_map<std::string, Value> vars;
};

enum class Flow { kNormal, kBreak, kContinue };

// Attaches a position to errors raised without one, so the innermost expression or statement
// that failed is reported.
template <typename F>
auto WithPosition(int line, int column, F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (Error& e) {
    if (e.line == 0) {
      e.line = line;
      e.column = column;
    }
    throw;
  }
}

class Evaluator {
 public:
  Evaluator(const ValueDict& vars, const GlobalsConfig& globals) : globals_(globals) {
    for (const auto& [k, v] : vars.items) root_.vars[k] = v;
  }

  std::string Run(const Template& t) {
    RenderBody(t.body, &root_);
    return std::move(out_);
  }

 private:
  Flow RenderBody(const Body& body, Frame* frame) {
    for (const auto& stmt : body) {
      const Flow f = WithPosition(stmt->line, stmt->column, [&] { return Render(*stmt, frame); });
      if (f != Flow::kNormal) return f;
    }
    return Flow::kNormal;
  }

  Flow Render(const Stmt& s, Frame* frame) {
    switch (s.kind) {
      case Stmt::Kind::kText:
        Append(s.text);
        return Flow::kNormal;
      case Stmt::Kind::kOutput:
        Append(Eval(*s.expr, frame).Str());
        return Flow::kNormal;
      case Stmt::Kind::kIf:
        for (const auto& [cond, body] : s.branches) {
          if (Eval(*cond, frame).Truthy()) return RenderBody(body, frame);
        }
        return RenderBody(s.else_body, frame);
      case Stmt::Kind::kFor:
        return RenderFor(s, frame);
      case Stmt::Kind::kSet:
        Assign(s.target, Eval(*s.expr, frame), frame);
        return Flow::kNormal;
      case Stmt::Kind::kSetBlock: {
        std::string saved;
        std::swap(saved, out_);
        const Flow f = RenderBody(s.body, frame);
        std::swap(saved, out_);
        Assign(s.target, Value(std::move(saved)), frame);
        return f;
      }
      case Stmt::Kind::kMacro:
        frame->vars[s.text] = MakeMacro(s);
        return Flow::kNormal;
      case Stmt::Kind::kBreak:
        return Flow::kBreak;
      case Stmt::Kind::kContinue:
        return Flow::kContinue;
      case Stmt::Kind::kGeneration:
        return RenderBody(s.body, frame);
    }
    return Flow::kNormal;
  }

  void Append(const std::string& text) {
    CheckStringSize(out_.size() + text.size());
    out_ += text;
  }

  void Step() {
    if (++steps_ > kMaxRenderSteps) {
      throw Error("template exceeded " + std::to_string(kMaxRenderSteps) +
                  " loop iterations and macro calls");
    }
  }

  void Bind(const Target& t, const Value& v, Frame* frame) {
    if (t.names.size() == 1) {
      frame->vars[t.names[0]] = v;
      return;
    }
    ValueList items = v.Iterate();
    if (items.size() != t.names.size()) {
      throw Error(items.size() > t.names.size()
                      ? "too many values to unpack (expected " + std::to_string(t.names.size()) +
                            ")"
                      : "not enough values to unpack (expected " + std::to_string(t.names.size()) +
                            ", got " + std::to_string(items.size()) + ")");
    }
    for (size_t i = 0; i < items.size(); ++i) frame->vars[t.names[i]] = items[i];
  }

  void Assign(const Target& t, const Value& v, Frame* frame) {
    if (t.attr.empty()) {
      Bind(t, v, frame);
      return;
    }
    Value ns = Lookup(t.names[0], frame);
    if (!ns.is_namespace()) throw Error("Cannot assign attribute on non-namespace object");
    CheckNamespaceAttribute(t.attr);
    ns.dict().Set(t.attr, v);
  }

  Flow RenderFor(const Stmt& s, Frame* frame) {
    const Value iterable = Eval(*s.expr, frame);
    ValueList items;
    for (Value& item : iterable.Iterate()) {
      if (s.cond) {
        Step();
        Frame probe{frame, {}};
        Bind(s.target, item, &probe);
        if (!Eval(*s.cond, &probe).Truthy()) continue;
      }
      items.push_back(std::move(item));
    }
    if (items.empty()) return RenderBody(s.else_body, frame);
    const auto n = static_cast<int64_t>(items.size());
    // One loop object per loop, updated in place each iteration like Jinja2's LoopContext (a
    // template that keeps a reference to `loop` sees it advance there too). Its fields sit at
    // fixed positions so an iteration only overwrites values.
    enum Field {
      kIndex,
      kIndex0,
      kRevindex,
      kRevindex0,
      kFirst,
      kLast,
      kLength,
      kDepth,
      kDepth0,
      kPrevitem,
      kNextitem,
      kCycle
    };
    auto position = std::make_shared<int64_t>(0);
    ValueDict fields;
    for (const char* name : {"index", "index0", "revindex", "revindex0", "first", "last", "length",
                             "depth", "depth0", "previtem", "nextitem", "cycle"}) {
      fields.items.emplace_back(name, Value());
    }
    fields.items[kLength].second = Value(n);
    fields.items[kDepth].second = Value(int64_t{1});
    fields.items[kDepth0].second = Value(int64_t{0});
    fields.items[kCycle].second = Value::Function("loop.cycle", [position](CallArgs& a) {
      if (a.positional.empty()) throw Error("no items for cycling given");
      return a.positional[static_cast<size_t>(*position) % a.positional.size()];
    });
    const Value loop = Value::Dict(std::move(fields));
    auto& f = loop.dict().items;
    Frame iter{frame, {}};
    for (int64_t i = 0; i < n; ++i) {
      Step();
      *position = i;
      f[kIndex].second = Value(i + 1);
      f[kIndex0].second = Value(i);
      f[kRevindex].second = Value(n - i);
      f[kRevindex0].second = Value(n - i - 1);
      f[kFirst].second = Value(i == 0);
      f[kLast].second = Value(i == n - 1);
      f[kPrevitem].second =
          i > 0 ? items[static_cast<size_t>(i - 1)] : Value::Undefined("there is no previous item");
      f[kNextitem].second =
          i + 1 < n ? items[static_cast<size_t>(i + 1)] : Value::Undefined("there is no next item");
      iter.vars.clear();  // each iteration starts with a fresh scope
      Bind(s.target, items[static_cast<size_t>(i)], &iter);
      iter.vars["loop"] = loop;
      if (RenderBody(s.body, &iter) == Flow::kBreak) break;
    }
    return Flow::kNormal;
  }

  Value MakeMacro(const Stmt& s) {
    const Stmt* macro = &s;
    return Value::Function(s.text, [this, macro](CallArgs& a) {
      // Macros may call themselves; bound the recursion instead of overflowing the stack.
      if (macro_depth_ >= kMaxMacroDepth) {
        throw Error("macro '" + macro->text + "' nested deeper than " +
                    std::to_string(kMaxMacroDepth) + " calls");
      }
      struct Depth {
        int* d;
        ~Depth() { --*d; }
      } depth{&++macro_depth_};
      Step();
      Frame f{&root_, {}};
      const auto& params = macro->params;
      if (a.positional.size() > params.size()) {
        throw Error("macro '" + macro->text + "' takes not more than " +
                    std::to_string(params.size()) + " argument(s)");
      }
      std::vector<bool> bound(params.size(), false);
      for (size_t i = 0; i < a.positional.size(); ++i) {
        f.vars[params[i].name] = a.positional[i];
        bound[i] = true;
      }
      for (auto& [k, v] : a.keyword) {
        size_t i = 0;
        while (i < params.size() && params[i].name != k) ++i;
        if (i == params.size()) {
          throw Error("macro '" + macro->text + "' takes no keyword argument '" + k + "'");
        }
        f.vars[k] = v;
        bound[i] = true;
      }
      for (size_t i = 0; i < params.size(); ++i) {
        if (bound[i]) continue;
        f.vars[params[i].name] =
            params[i].default_value
                ? Eval(*params[i].default_value, &f)
                : Value::Undefined("parameter '" + params[i].name + "' was not provided");
      }
      std::string saved;
      std::swap(saved, out_);
      RenderBody(macro->body, &f);
      std::swap(saved, out_);
      return Value(std::move(saved));
    });
  }

  Value Lookup(const std::string& name, const Frame* frame) const {
    for (const Frame* f = frame; f != nullptr; f = f->parent) {
      auto it = f->vars.find(name);
      if (it != f->vars.end()) return it->second;
    }
    return GlobalFunction(name, globals_);
  }

  CallArgs EvalArgs(const Expr& e, Frame* frame) {
    CallArgs args;
    for (size_t i = 1; i < e.args.size(); ++i) args.positional.push_back(Eval(*e.args[i], frame));
    for (const auto& [k, v] : e.kwargs) args.keyword.emplace_back(k, Eval(*v, frame));
    return args;
  }

  Value Eval(const Expr& e, Frame* frame) {
    return WithPosition(e.line, e.column, [&] { return EvalInner(e, frame); });
  }

  Value EvalInner(const Expr& e, Frame* frame) {
    using Kd = Expr::Kind;
    switch (e.kind) {
      case Kd::kConst:
        return e.constant;
      case Kd::kName:
        return Lookup(e.name, frame);
      case Kd::kGetAttr:
        return GetAttr(Eval(*e.args[0], frame), e.name);
      case Kd::kGetItem: {
        const Value obj = Eval(*e.args[0], frame);
        return GetItem(obj, Eval(*e.args[1], frame));
      }
      case Kd::kSlice: {
        const Value obj = Eval(*e.args[0], frame);
        Value parts[3];
        const Value* ptr[3] = {nullptr, nullptr, nullptr};
        for (int i = 0; i < 3; ++i) {
          if (e.args[i + 1]) {
            parts[i] = Eval(*e.args[i + 1], frame);
            ptr[i] = &parts[i];
          }
        }
        return Slice(obj, ptr[0], ptr[1], ptr[2]);
      }
      case Kd::kCall: {
        const Value fn = Eval(*e.args[0], frame);
        fn.RequireDefined();
        if (!fn.is_callable()) throw Error("'" + fn.TypeName() + "' object is not callable");
        CallArgs args = EvalArgs(e, frame);
        return fn.callable().call(args);
      }
      case Kd::kFilter: {
        const Value input = Eval(*e.args[0], frame);
        CallArgs args = EvalArgs(e, frame);
        return ApplyFilter(e.name, input, args);
      }
      case Kd::kTest: {
        const Value input = Eval(*e.args[0], frame);
        CallArgs args = EvalArgs(e, frame);
        return Value(ApplyTest(e.name, input, args));
      }
      case Kd::kNot:
        return Value(!Eval(*e.args[0], frame).Truthy());
      case Kd::kNeg:
      case Kd::kPos: {
        const Value v = Eval(*e.args[0], frame);
        v.RequireDefined();
        if (!v.is_number()) {
          throw Error("bad operand type for unary " + std::string(e.kind == Kd::kNeg ? "-" : "+") +
                      ": '" + v.TypeName() + "'");
        }
        if (e.kind == Kd::kPos) return v.kind() == Value::Kind::kFloat ? v : Value(v.as_int());
        if (v.kind() == Value::Kind::kFloat) return Value(-v.as_float());  // keeps -0.0
        return BinaryOp("-", Value(int64_t{0}), v);
      }
      case Kd::kBinary: {
        const Value a = Eval(*e.args[0], frame);
        return BinaryOp(e.name, a, Eval(*e.args[1], frame));
      }
      case Kd::kConcat: {
        std::string s;
        for (const auto& a : e.args) {
          const std::string part = Eval(*a, frame).Str();
          CheckStringSize(s.size() + part.size());
          s += part;
        }
        return Value(s);
      }
      case Kd::kCompare: {
        Value left = Eval(*e.args[0], frame);
        for (size_t i = 0; i < e.ops.size(); ++i) {
          Value right = Eval(*e.args[i + 1], frame);
          if (!CompareOp(e.ops[i], left, right)) return Value(false);
          left = std::move(right);
        }
        return Value(true);
      }
      case Kd::kAnd: {
        Value a = Eval(*e.args[0], frame);
        return a.Truthy() ? Eval(*e.args[1], frame) : a;
      }
      case Kd::kOr: {
        Value a = Eval(*e.args[0], frame);
        return a.Truthy() ? a : Eval(*e.args[1], frame);
      }
      case Kd::kCondExpr:
        if (Eval(*e.args[1], frame).Truthy()) return Eval(*e.args[0], frame);
        if (e.args[2]) return Eval(*e.args[2], frame);
        return Value::Undefined(
            "the inline if-expression evaluated to false and no else section "
            "was defined");
      case Kd::kList:
      case Kd::kTuple: {
        ValueList items;
        for (const auto& a : e.args) items.push_back(Eval(*a, frame));
        return e.kind == Kd::kList ? Value::List(std::move(items)) : Value::Tuple(std::move(items));
      }
      case Kd::kDict: {
        ValueDict d;
        for (size_t i = 0; i + 1 < e.args.size(); i += 2) {
          const Value k = Eval(*e.args[i], frame);
          if (!k.is_string()) throw Error("dict keys other than strings are not supported");
          d.Set(k.as_string(), Eval(*e.args[i + 1], frame));
        }
        return Value::Dict(std::move(d));
      }
    }
    throw Error("internal error: unknown expression kind");
  }

  static constexpr int kMaxMacroDepth = 64;
  int macro_depth_ = 0;
  int64_t steps_ = 0;
  const GlobalsConfig& globals_;
  Frame root_;
  std::string out_;
};

}  // namespace

std::string RenderTemplate(const Template& tmpl, const ValueDict& vars,
                           const GlobalsConfig& globals) {
  return Evaluator(vars, globals).Run(tmpl);
}

}  // namespace spqr::jinja
