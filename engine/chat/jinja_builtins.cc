// Attribute/item access, operators, tests, str/dict methods and global functions. The filters
// live in jinja_filters.cc.
#include "engine/chat/jinja_builtins.h"

#include <algorithm>
#include <cmath>
#include <ctime>
#include <set>

#include "absl/strings/str_cat.h"
#include "engine/chat/jinja_parser.h"
#include "engine/chat/jinja_text.h"

namespace spqr::jinja {
namespace {

const std::string* OptStr(const Value* v) {
  if (v == nullptr || v->is_none()) return nullptr;
  if (!v->is_string()) throw Error("expected a string argument, got '" + v->TypeName() + "'");
  return &v->as_string();
}

int64_t IntArg(const Value& v, const char* what) {
  if (!v.is_int())
    throw Error(std::string(what) + " must be an integer, got '" + v.TypeName() + "'");
  return v.as_int();
}

// Python's str.startswith/endswith: a str or a tuple of str.
bool AffixMatch(const std::string& s, const Value& affix, bool prefix) {
  auto one = [&](const Value& a) {
    if (!a.is_string()) throw Error("startswith/endswith first arg must be str or a tuple of str");
    const std::string& p = a.as_string();
    if (p.size() > s.size()) return false;
    return prefix ? s.compare(0, p.size(), p) == 0
                  : s.compare(s.size() - p.size(), p.size(), p) == 0;
  };
  if (affix.is_list()) {
    for (const Value& a : affix.list()) {
      if (one(a)) return true;
    }
    return false;
  }
  return one(affix);
}

ValueList StringsToValues(const std::vector<std::string>& parts) {
  ValueList out;
  for (const auto& p : parts) out.emplace_back(p);
  return out;
}

Value StrMethod(const std::string& s, const std::string& name, CallArgs& args) {
  if (name == "strip" || name == "lstrip" || name == "rstrip") {
    ArgReader r(name, args, {"chars"});
    return Value(PyStrip(s, OptStr(r.Get(0)), name != "rstrip", name != "lstrip"));
  }
  if (name == "startswith" || name == "endswith") {
    ArgReader r(name, args, {"prefix"});
    if (r.Get(0) == nullptr) throw Error(name + "() takes at least 1 argument");
    return Value(AffixMatch(s, *r.Get(0), name == "startswith"));
  }
  if (name == "split" || name == "rsplit") {
    ArgReader r(name, args, {"sep", "maxsplit"});
    const std::string* sep = OptStr(r.Get(0));
    if (sep != nullptr && sep->empty()) throw Error("empty separator");
    const int64_t maxsplit = IntArg(r.GetOr(1, Value(int64_t{-1})), "maxsplit");
    return Value::List(
        StringsToValues(name == "split" ? PySplit(s, sep, maxsplit) : PyRSplit(s, sep, maxsplit)));
  }
  if (name == "upper" || name == "lower" || name == "title" || name == "capitalize") {
    ArgReader r(name, args, {});
    if (name == "upper") return Value(PyUpper(s));
    if (name == "lower") return Value(PyLower(s));
    if (name == "title") return Value(PyTitle(s));
    return Value(PyCapitalize(s));
  }
  if (name == "replace") {
    ArgReader r(name, args, {"old", "new", "count"});
    if (r.Get(0) == nullptr || r.Get(1) == nullptr) throw Error("replace() takes 2 arguments");
    const std::string* o = OptStr(r.Get(0));
    const std::string* n = OptStr(r.Get(1));
    if (o == nullptr || n == nullptr) throw Error("replace() arguments must be str");
    return Value(PyReplace(s, *o, *n, IntArg(r.GetOr(2, Value(int64_t{-1})), "count")));
  }
  if (name == "find" || name == "rfind" || name == "count") {
    ArgReader r(name, args, {"sub"});
    const std::string* sub = OptStr(r.Get(0));
    if (sub == nullptr) throw Error(name + "() takes a str argument");
    if (name == "count") {
      if (sub->empty()) return Value(CodePointCount(s) + 1);
      int64_t n = 0;
      for (size_t p = s.find(*sub); p != std::string::npos; p = s.find(*sub, p + sub->size())) ++n;
      return Value(n);
    }
    const size_t p = name == "find" ? s.find(*sub) : s.rfind(*sub);
    return Value(p == std::string::npos ? int64_t{-1} : CodePointCount(s.substr(0, p)));
  }
  if (name == "join") {
    ArgReader r(name, args, {"iterable"});
    if (r.Get(0) == nullptr) throw Error("join() takes exactly one argument");
    std::string out;
    bool first = true;
    for (const Value& v : r.Get(0)->Iterate()) {
      if (!v.is_string())
        throw Error("sequence item: expected str instance, " + v.TypeName() + " found");
      CheckStringSize(out.size() + s.size() + v.as_string().size());
      if (!first) out += s;
      first = false;
      out += v.as_string();
    }
    return Value(out);
  }
  if (name == "isdigit" || name == "isspace" || name == "isalpha" || name == "isupper" ||
      name == "islower") {
    ArgReader r(name, args, {});
    if (name == "isupper" || name == "islower") {
      const bool cased = PyUpper(s) != PyLower(s);
      return Value(cased && (name == "isupper" ? PyUpper(s) == s : PyLower(s) == s));
    }
    if (s.empty()) return Value(false);
    for (std::string_view cp : SplitCodePoints(s)) {
      const uint32_t c = DecodeCodePoint(cp);
      const bool ok = name == "isdigit"   ? (c >= '0' && c <= '9')
                      : name == "isspace" ? IsPySpace(c)
                                          : ((c | 32) >= 'a' && (c | 32) <= 'z');
      if (!ok) {
        if (name == "isalpha" && c >= 0x80) {
          throw Error("isalpha() on non-ASCII text is not supported");
        }
        return Value(false);
      }
    }
    return Value(true);
  }
  throw Error("unsupported method 'str." + name + "()'");
}

Value DictMethod(const Value& d, const std::string& name, CallArgs& args) {
  if (name == "items" || name == "keys" || name == "values") {
    ArgReader r(name, args, {});
    ValueList out;
    for (const auto& [k, v] : d.dict().items) {
      if (name == "items") out.push_back(Value::Tuple({Value(k), v}));
      if (name == "keys") out.emplace_back(k);
      if (name == "values") out.push_back(v);
    }
    return Value::List(std::move(out));
  }
  if (name == "get") {
    ArgReader r(name, args, {"key", "default"});
    if (r.Get(0) == nullptr) throw Error("get expected at least 1 argument");
    if (!r.Get(0)->is_string()) return r.GetOr(1, Value::None());
    const Value* v = d.dict().Find(r.Get(0)->as_string());
    return v != nullptr ? *v : r.GetOr(1, Value::None());
  }
  throw Error("unsupported method 'dict." + name + "()'");
}

const std::set<std::string, std::less<>> kStrMethods = {
    "strip", "lstrip", "rstrip",  "startswith", "endswith", "split",   "rsplit",
    "upper", "lower",  "title",   "capitalize", "replace",  "find",    "rfind",
    "count", "join",   "isdigit", "isspace",    "isalpha",  "isupper", "islower"};
const std::set<std::string, std::less<>> kDictMethods = {"items", "keys", "values", "get"};
// Python's other dict attributes: `.name` finds the attribute, never the key of that name.
const std::set<std::string, std::less<>> kOtherDictAttrs = {
    "clear", "copy", "fromkeys", "pop", "popitem", "setdefault", "update"};

int64_t CheckedInt(bool overflow, int64_t v) {
  if (overflow) throw Error("integer overflow (values beyond 64 bits are not supported)");
  return v;
}

double PyMod(double a, double b) {
  double m = std::fmod(a, b);
  if (m != 0 && ((m < 0) != (b < 0))) m += b;
  return m;
}

bool Contains(const Value& container, const Value& item) {
  switch (container.kind()) {
    case Value::Kind::kUndefined:
      return false;
    case Value::Kind::kString:
      if (!item.is_string()) {
        throw Error("'in <string>' requires string as left operand, not " + item.TypeName());
      }
      return container.as_string().find(item.as_string()) != std::string::npos;
    case Value::Kind::kList:
      for (const Value& v : container.list()) {
        if (v.Equals(item)) return true;
      }
      return false;
    case Value::Kind::kDict:
      return item.is_string() && container.dict().Find(item.as_string()) != nullptr;
    default:
      throw Error("argument of type '" + container.TypeName() + "' is not iterable");
  }
}

}  // namespace

ArgReader::ArgReader(const std::string& callee, CallArgs& args, std::vector<std::string> params)
    : bound_(params.size(), nullptr) {
  if (args.positional.size() > params.size()) {
    throw Error(callee + "() takes at most " + std::to_string(params.size()) + " arguments (" +
                std::to_string(args.positional.size()) + " given)");
  }
  for (size_t i = 0; i < args.positional.size(); ++i) bound_[i] = &args.positional[i];
  for (const auto& [k, v] : args.keyword) {
    size_t i = 0;
    while (i < params.size() && params[i] != k) ++i;
    if (i == params.size())
      throw Error(callee + "() got an unexpected keyword argument '" + k + "'");
    if (bound_[i] != nullptr)
      throw Error(callee + "() got multiple values for argument '" + k + "'");
    bound_[i] = &v;
  }
}
const Value* ArgReader::Get(size_t i) const { return i < bound_.size() ? bound_[i] : nullptr; }
Value ArgReader::GetOr(size_t i, Value fallback) const {
  const Value* v = Get(i);
  return v != nullptr ? *v : std::move(fallback);
}

bool IsSupportedMethod(std::string_view name) {
  return kStrMethods.count(name) || kDictMethods.count(name) || name == "cycle";
}

Value GetAttr(const Value& obj, const std::string& name) {
  obj.RequireDefined();
  // Built only when needed: attribute lookups are the hot path of rendering.
  auto missing = [&] {
    return absl::StrCat("'", obj.TypeName(), " object' has no attribute '", name, "'");
  };
  if (obj.is_string()) {
    if (!kStrMethods.count(name)) return Value::Undefined(missing());
    const std::string s = obj.as_string();
    return Value::Function("str." + name, [s, name](CallArgs& a) { return StrMethod(s, name, a); });
  }
  if (obj.is_dict()) {
    if (kDictMethods.count(name)) {
      return Value::Function("dict." + name,
                             [obj, name](CallArgs& a) { return DictMethod(obj, name, a); });
    }
    if (kOtherDictAttrs.count(name)) {
      return Value::Undefined("access to dict attribute '" + name + "' is not supported");
    }
    const Value* v = obj.dict().Find(name);
    return v != nullptr ? *v : Value::Undefined(missing());
  }
  if (obj.is_namespace()) {
    const Value* v = obj.dict().Find(name);
    return v != nullptr ? *v : Value::Undefined(missing());
  }
  return Value::Undefined(missing());
}

Value GetItem(const Value& obj, const Value& key) {
  obj.RequireDefined();
  if (obj.is_dict() || obj.is_namespace()) {
    if (key.is_string()) {
      const Value* v = obj.dict().Find(key.as_string());
      if (v != nullptr) return *v;
      if (obj.is_dict()) return GetAttr(obj, key.as_string());
    }
    return Value::Undefined(
        absl::StrCat("'", obj.TypeName(), " object' has no attribute ", key.Repr()));
  }
  if ((obj.is_list() || obj.is_string()) && key.is_int()) {
    const int64_t n = obj.Length();
    int64_t i = key.as_int();
    if (i < 0) i += n;
    if (i < 0 || i >= n) {
      return Value::Undefined(
          absl::StrCat("'", obj.TypeName(), " object' has no element ", key.Repr()));
    }
    if (obj.is_list()) return obj.list()[static_cast<size_t>(i)];
    return Value(std::string(SplitCodePoints(obj.as_string())[static_cast<size_t>(i)]));
  }
  if (key.is_string()) return GetAttr(obj, key.as_string());
  return Value::Undefined(
      absl::StrCat("'", obj.TypeName(), " object' has no element ", key.Repr()));
}

Value Slice(const Value& obj, const Value* start, const Value* stop, const Value* step) {
  obj.RequireDefined();
  if (!obj.is_list() && !obj.is_string())
    throw Error("'" + obj.TypeName() + "' object is not subscriptable");
  auto opt = [](const Value* v) { return v == nullptr || v->is_none() ? nullptr : v; };
  start = opt(start);
  stop = opt(stop);
  step = opt(step);
  const int64_t n = obj.Length();
  const int64_t st = step ? IntArg(*step, "slice step") : 1;
  if (st == 0) throw Error("slice step cannot be zero");
  auto clamp = [&](const Value* v, int64_t dflt) {
    if (v == nullptr) return dflt;
    int64_t i = IntArg(*v, "slice indices");
    if (i < 0) i += n;
    if (st > 0) return std::clamp<int64_t>(i, 0, n);
    return std::clamp<int64_t>(i, -1, n - 1);
  };
  const int64_t b = clamp(start, st > 0 ? 0 : n - 1);
  const int64_t e = clamp(stop, st > 0 ? n : -1);
  std::vector<size_t> idx;
  for (int64_t i = b; st > 0 ? i < e : i > e;) {
    idx.push_back(static_cast<size_t>(i));
    if (__builtin_add_overflow(i, st, &i)) break;  // a huge step ends the slice
  }
  if (obj.is_string()) {
    auto cps = SplitCodePoints(obj.as_string());
    std::string out;
    for (size_t i : idx) out.append(cps[i]);
    return Value(out);
  }
  ValueList out;
  for (size_t i : idx) out.push_back(obj.list()[i]);
  return obj.is_tuple() ? Value::Tuple(std::move(out)) : Value::List(std::move(out));
}

Value BinaryOp(const std::string& op, const Value& a, const Value& b) {
  a.RequireDefined();
  b.RequireDefined();
  const bool ints = a.is_int() && b.is_int();
  if (a.is_number() && b.is_number()) {
    const int64_t x = a.as_int(), y = b.as_int();
    int64_t r = 0;
    // Checked 64-bit arithmetic (Python ints are unbounded; overflow is an error here).
    auto checked = [](bool overflow, int64_t v) { return Value(CheckedInt(overflow, v)); };
    if (op == "+") {
      if (!ints) return Value(a.as_float() + b.as_float());
      const bool o = __builtin_add_overflow(x, y, &r);
      return checked(o, r);
    }
    if (op == "-") {
      if (!ints) return Value(a.as_float() - b.as_float());
      const bool o = __builtin_sub_overflow(x, y, &r);
      return checked(o, r);
    }
    if (op == "*") {
      if (!ints) return Value(a.as_float() * b.as_float());
      const bool o = __builtin_mul_overflow(x, y, &r);
      return checked(o, r);
    }
    const bool zero = ints ? y == 0 : b.as_float() == 0;
    if ((op == "/" || op == "//" || op == "%") && zero) {
      throw Error(ints && op != "/" ? "integer division or modulo by zero" : "division by zero");
    }
    if (op == "/") return Value(a.as_float() / b.as_float());
    if (op == "//") {
      if (ints) {
        if (x == INT64_MIN && y == -1) CheckedInt(true, 0);
        int64_t q = x / y;
        if ((x % y != 0) && ((x < 0) != (y < 0))) --q;
        return Value(q);
      }
      return Value(std::floor(a.as_float() / b.as_float()));
    }
    if (op == "%") {
      if (ints) {
        if (y == -1) return Value(int64_t{0});
        int64_t m = x % y;
        if (m != 0 && ((m < 0) != (y < 0))) m += y;
        return Value(m);
      }
      return Value(PyMod(a.as_float(), b.as_float()));
    }
    if (op == "**") {
      if (ints && y >= 0) {
        int64_t acc = 1;
        for (int64_t i = 0; i < y; ++i) {
          if (__builtin_mul_overflow(acc, x, &acc)) CheckedInt(true, 0);
          if (acc == 0 || acc == 1) break;
        }
        return Value(acc);
      }
      return Value(std::pow(a.as_float(), b.as_float()));
    }
  }
  if (op == "+" && a.is_string() && b.is_string()) {
    CheckStringSize(a.as_string().size() + b.as_string().size());
    return Value(a.as_string() + b.as_string());
  }
  if (op == "+" && a.is_list() && b.is_list() && a.is_tuple() == b.is_tuple()) {
    if (a.list().size() + b.list().size() > kMaxListItems) throw Error("list result too large");
    ValueList out = a.list();
    out.insert(out.end(), b.list().begin(), b.list().end());
    return a.is_tuple() ? Value::Tuple(std::move(out)) : Value::List(std::move(out));
  }
  if (op == "*" && (((a.is_string() || a.is_list()) && b.is_int()) ||
                    ((b.is_string() || b.is_list()) && a.is_int()))) {
    // Sequence repetition (either order, as in Python), bounded so a template cannot exhaust
    // memory with 'x' * 10 ** 12.
    const Value& seq = a.is_int() ? b : a;
    const int64_t n = std::max<int64_t>(0, (a.is_int() ? a : b).as_int());
    const int64_t unit = seq.is_string() ? static_cast<int64_t>(seq.as_string().size())
                                         : static_cast<int64_t>(seq.list().size());
    const auto limit = static_cast<int64_t>(seq.is_string() ? kMaxStringBytes : kMaxListItems);
    if (unit > 0 && n > limit / unit) throw Error("sequence repetition result too large");
    if (seq.is_string()) {
      std::string out;
      for (int64_t i = 0; i < n; ++i) out += seq.as_string();
      return Value(out);
    }
    ValueList out;
    for (int64_t i = 0; i < n; ++i) out.insert(out.end(), seq.list().begin(), seq.list().end());
    return seq.is_tuple() ? Value::Tuple(std::move(out)) : Value::List(std::move(out));
  }
  if (op == "%" && a.is_string()) throw Error("string formatting with '%' is not supported");
  throw Error("unsupported operand type(s) for " + op + ": '" + a.TypeName() + "' and '" +
              b.TypeName() + "'");
}

bool CompareOp(const std::string& op, const Value& a, const Value& b) {
  if (op == "==") return a.Equals(b);
  if (op == "!=") return !a.Equals(b);
  if (op == "<") return a.Less(b);
  if (op == ">") return b.Less(a);
  if (op == "<=") return a.Less(b) || a.Equals(b);
  if (op == ">=") return b.Less(a) || a.Equals(b);
  if (op == "in") return Contains(b, a);
  if (op == "notin") return !Contains(b, a);
  throw Error("unknown comparison operator '" + op + "'");
}

namespace {
const std::set<std::string, std::less<>> kTests = {
    "defined",  "undefined", "none",   "boolean", "true",        "false",
    "integer",  "float",     "number", "string",  "mapping",     "iterable",
    "sequence", "callable",  "odd",    "even",    "divisibleby", "eq",
    "equalto",  "==",        "ne",     "!=",      "lt",          "lessthan",
    "<",        "le",        "<=",     "gt",      "greaterthan", ">",
    "ge",       ">=",        "in",     "sameas",  "lower",       "upper"};
}  // namespace

bool IsSupportedTest(std::string_view name) { return kTests.count(name) > 0; }

bool ApplyTest(const std::string& name, const Value& v, CallArgs& args) {
  using Kd = Value::Kind;
  ArgReader r(name, args, {"other"});
  if (name == "defined") return !v.is_undefined();
  if (name == "undefined") return v.is_undefined();
  if (name == "none") return v.is_none();
  if (name == "boolean") return v.kind() == Kd::kBool;
  if (name == "true") return v.kind() == Kd::kBool && v.as_bool();
  if (name == "false") return v.kind() == Kd::kBool && !v.as_bool();
  if (name == "integer") return v.kind() == Kd::kInt;
  if (name == "float") return v.kind() == Kd::kFloat;
  if (name == "number") return v.is_number();
  if (name == "string") return v.is_string();
  if (name == "mapping") return v.is_dict();
  if (name == "iterable") return v.is_undefined() || v.is_string() || v.is_list() || v.is_dict();
  if (name == "sequence") return v.is_undefined() || v.is_string() || v.is_list() || v.is_dict();
  if (name == "callable") return v.is_callable();
  if (name == "odd" || name == "even") {
    const int64_t i = IntArg(v, "odd/even test value");
    return (((i % 2) + 2) % 2 == 1) == (name == "odd");
  }
  if (name == "lower") return v.is_string() && PyLower(v.as_string()) == v.as_string();
  if (name == "upper") return v.is_string() && PyUpper(v.as_string()) == v.as_string();
  const Value* other = r.Get(0);
  if (other == nullptr) throw Error("test '" + name + "' needs an argument");
  if (name == "divisibleby") {
    const int64_t d = IntArg(*other, "divisibleby argument");
    if (d == 0) throw Error("integer division or modulo by zero");
    return IntArg(v, "divisibleby value") % d == 0;
  }
  if (name == "sameas") {
    // Python identity: containers by reference; for scalars CPython's identity depends on object
    // caching, approximated here by same type and equal value.
    if (v.is_list() || v.is_dict() || v.is_namespace()) {
      return v.kind() == other->kind() &&
             (v.is_list() ? &v.list() == &other->list() : &v.dict() == &other->dict());
    }
    return v.kind() == other->kind() && v.Equals(*other);
  }
  static const std::pair<const char*, const char*> kAliases[] = {
      {"eq", "=="}, {"equalto", "=="}, {"==", "=="},      {"ne", "!="},
      {"!=", "!="}, {"lt", "<"},       {"lessthan", "<"}, {"<", "<"},
      {"le", "<="}, {"<=", "<="},      {"gt", ">"},       {"greaterthan", ">"},
      {">", ">"},   {"ge", ">="},      {">=", ">="},      {"in", "in"}};
  for (const auto& [alias, op] : kAliases) {
    if (name == alias) return CompareOp(op, v, *other);
  }
  throw Error("unsupported test '" + name + "'");
}

void CheckNamespaceAttribute(const std::string& name) {
  if (!name.empty() && name[0] == '_') {
    throw Error(
        "Chat templates cannot store underscore-prefixed attributes on a namespace, but got " +
        StringRepr(name) + ". Please rename the attribute.");
  }
}

bool IsSupportedGlobalFunction(std::string_view name) {
  return name == "range" || name == "namespace" || name == "dict" || name == "raise_exception" ||
         name == "strftime_now";
}

Value GlobalFunction(const std::string& name, const GlobalsConfig& config) {
  if (name == "range") {
    return Value::Function("range", [](CallArgs& a) {
      if (!a.keyword.empty()) throw Error("range() takes no keyword arguments");
      std::vector<int64_t> p;
      for (const Value& v : a.positional) p.push_back(IntArg(v, "range() argument"));
      if (p.empty() || p.size() > 3) throw Error("range expected 1 to 3 arguments");
      const int64_t start = p.size() == 1 ? 0 : p[0];
      const int64_t stop = p.size() == 1 ? p[0] : p[1];
      const int64_t step = p.size() == 3 ? p[2] : 1;
      if (step == 0) throw Error("range() arg 3 must not be zero");
      ValueList out;
      for (int64_t i = start; step > 0 ? i < stop : i > stop;) {
        if (out.size() >= 100000) throw Error("range too big (the sandbox allows 100000 items)");
        out.emplace_back(i);
        if (__builtin_add_overflow(i, step, &i)) break;
      }
      return Value::List(std::move(out));
    });
  }
  if (name == "namespace" || name == "dict") {
    const bool ns = name == "namespace";
    return Value::Function(name, [ns](CallArgs& a) {
      ValueDict d;
      if (a.positional.size() > 1)
        throw Error("namespace()/dict() takes at most 1 positional argument");
      if (a.positional.size() == 1) {
        if (!a.positional[0].is_dict())
          throw Error("namespace()/dict() positional argument must be a dict");
        d = a.positional[0].dict();
      }
      for (auto& [k, v] : a.keyword) d.Set(k, v);
      if (ns) {
        for (const auto& [k, v] : d.items) CheckNamespaceAttribute(k);
      }
      return ns ? Value::Namespace(std::move(d)) : Value::Dict(std::move(d));
    });
  }
  if (name == "raise_exception") {
    return Value::Function(name, [](CallArgs& a) -> Value {
      ArgReader r("raise_exception", a, {"message"});
      Error e(r.GetOr(0, Value("")).Str());
      e.raised_by_template = true;
      throw e;
    });
  }
  if (name == "strftime_now") {
    auto now = config.now;
    return Value::Function(name, [now](CallArgs& a) {
      ArgReader r("strftime_now", a, {"format"});
      const std::string* fmt = OptStr(r.Get(0));
      if (fmt == nullptr) throw Error("strftime_now() takes a format string");
      const std::time_t t = now ? static_cast<std::time_t>(now()) : std::time(nullptr);
      std::tm tm{};
      localtime_r(&t, &tm);
      char buf[512];
      const size_t n = std::strftime(buf, sizeof(buf), fmt->c_str(), &tm);
      if (n == 0 && !fmt->empty()) throw Error("strftime_now(): format result too long or empty");
      return Value(std::string(buf, n));
    });
  }
  return Value::Undefined("'" + name + "' is undefined");
}

}  // namespace spqr::jinja
