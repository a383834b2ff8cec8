// Jinja2's builtin filters that chat templates use, with tojson replaced by transformers' version
// (json.dumps with ensure_ascii=False and no HTML escaping).
#include <algorithm>
#include <cmath>
#include <set>

#include "engine/chat/jinja_builtins.h"
#include "engine/chat/jinja_parser.h"
#include "engine/chat/jinja_text.h"

namespace spqr::jinja {
namespace {

const std::set<std::string, std::less<>> kFilters = {
    "abs",    "capitalize", "count",   "d",       "default", "first",  "float",      "indent",
    "int",    "items",      "join",    "last",    "length",  "list",   "lower",      "map",
    "reject", "rejectattr", "replace", "reverse", "safe",    "select", "selectattr", "sort",
    "string", "title",      "tojson",  "trim",    "unique",  "upper"};

CallArgs Rest(const CallArgs& args, size_t skip) {
  CallArgs rest;
  for (size_t i = skip; i < args.positional.size(); ++i)
    rest.positional.push_back(args.positional[i]);
  rest.keyword = args.keyword;
  return rest;
}

// Jinja's make_attrgetter: "a.b" and "0" (integer item) paths.
Value AttrPath(const Value& v, const std::string& path) {
  Value cur = v;
  size_t pos = 0;
  while (true) {
    const size_t dot = path.find('.', pos);
    const std::string part =
        path.substr(pos, dot == std::string::npos ? std::string::npos : dot - pos);
    const bool digits = !part.empty() && std::all_of(part.begin(), part.end(), ::isdigit);
    cur = GetItem(cur, digits ? Value(static_cast<int64_t>(std::stoll(part))) : Value(part));
    if (dot == std::string::npos) return cur;
    pos = dot + 1;
  }
}

std::vector<std::string> SplitLines(const std::string& s) {
  std::vector<std::string> lines;
  std::string cur;
  auto cps = SplitCodePoints(s);
  for (size_t i = 0; i < cps.size(); ++i) {
    const uint32_t c = DecodeCodePoint(cps[i]);
    const bool brk = c == '\n' || c == '\r' || c == 0x0B || c == 0x0C || (c >= 0x1C && c <= 0x1E) ||
                     c == 0x85 || c == 0x2028 || c == 0x2029;
    if (!brk) {
      cur.append(cps[i]);
      continue;
    }
    if (c == '\r' && i + 1 < cps.size() && cps[i + 1] == "\n") ++i;
    lines.push_back(cur);
    cur.clear();
  }
  if (!cur.empty()) lines.push_back(cur);
  return lines;
}

Value SortKey(const Value& v, bool case_sensitive) {
  if (!case_sensitive && v.is_string()) return Value(PyLower(v.as_string()));
  return v;
}

Value SelectOrReject(const Value& input, CallArgs& args, bool select, bool by_attr) {
  const std::string fname = std::string(select ? "select" : "reject") + (by_attr ? "attr" : "");
  std::string attr;
  size_t next = 0;
  if (by_attr) {
    if (args.positional.empty() || !args.positional[0].is_string()) {
      throw Error(fname + "() needs an attribute name");
    }
    attr = args.positional[0].as_string();
    next = 1;
  }
  std::string test;
  if (args.positional.size() > next) {
    if (!args.positional[next].is_string()) throw Error(fname + "() test name must be a string");
    test = args.positional[next].as_string();
    if (!IsSupportedTest(test)) throw Error("unsupported test '" + test + "'");
    ++next;
  }
  CallArgs test_args = Rest(args, next);
  ValueList out;
  for (const Value& item : input.Iterate()) {
    const Value subject = by_attr ? AttrPath(item, attr) : item;
    CallArgs a = test_args;
    const bool pass = test.empty() ? subject.Truthy() : ApplyTest(test, subject, a);
    if (pass == select) out.push_back(item);
  }
  return Value::List(std::move(out));
}

// Python's float(str) after stripping: decimal literals, inf/infinity/nan; unlike strtod, no
// hexadecimal. Returns false when Python would raise ValueError.
bool PyParseFloat(const std::string& s, double* out) {
  if (s.empty() || s.find_first_of("xXpP") != std::string::npos) return false;
  try {
    size_t used = 0;
    *out = std::stod(s, &used);
    return used == s.size();
  } catch (const std::exception&) {
    return false;
  }
}

// Python's int(str, 10) after stripping: optional sign and decimal digits.
bool PyParseInt(const std::string& s, int64_t* out) {
  size_t i = (!s.empty() && (s[0] == '+' || s[0] == '-')) ? 1 : 0;
  if (i == s.size()) return false;
  for (size_t k = i; k < s.size(); ++k) {
    if (s[k] < '0' || s[k] > '9') return false;
  }
  try {
    *out = std::stoll(s);
    return true;
  } catch (const std::exception&) {
    return false;
  }
}

}  // namespace

bool IsSupportedFilter(std::string_view name) { return kFilters.count(name) > 0; }

Value ApplyFilter(const std::string& name, const Value& v, CallArgs& args) {
  if (name == "default" || name == "d") {
    ArgReader r(name, args, {"default_value", "boolean"});
    const bool boolean = r.GetOr(1, Value(false)).Truthy();
    if (v.is_undefined() || (boolean && !v.Truthy())) return r.GetOr(0, Value(""));
    return v;
  }
  if (name == "length" || name == "count") {
    ArgReader r(name, args, {});
    return Value(v.Length());
  }
  if (name == "string" || name == "safe") {
    ArgReader r(name, args, {});
    return Value(v.Str());
  }
  if (name == "trim") {
    ArgReader r(name, args, {"chars"});
    const Value* chars = r.Get(0);
    std::string c;
    if (chars != nullptr && !chars->is_none()) c = chars->Str();
    return Value(
        PyStrip(v.Str(), chars != nullptr && !chars->is_none() ? &c : nullptr, true, true));
  }
  if (name == "upper" || name == "lower" || name == "capitalize" || name == "title") {
    ArgReader r(name, args, {});
    const std::string s = v.Str();
    if (name == "upper") return Value(PyUpper(s));
    if (name == "lower") return Value(PyLower(s));
    if (name == "capitalize") return Value(PyCapitalize(s));
    return Value(JinjaTitle(s));
  }
  if (name == "replace") {
    ArgReader r(name, args, {"old", "new", "count"});
    if (r.Get(0) == nullptr || r.Get(1) == nullptr) throw Error("replace filter needs old and new");
    const Value count = r.GetOr(2, Value::None());
    return Value(PyReplace(v.Str(), r.Get(0)->Str(), r.Get(1)->Str(),
                           count.is_none() ? -1 : count.as_int()));
  }
  if (name == "tojson") {
    ArgReader r(name, args, {"ensure_ascii", "indent", "separators", "sort_keys"});
    JsonDumpOptions o;
    o.ensure_ascii = r.GetOr(0, Value(false)).Truthy();
    const Value indent = r.GetOr(1, Value::None());
    if (indent.is_int()) {
      o.indent = static_cast<int>(std::max<int64_t>(0, indent.as_int()));
    } else if (indent.is_string()) {
      o.indent_str = indent.as_string();
      o.indent = 0;
    } else if (!indent.is_none()) {
      throw Error("tojson indent must be an integer or a string");
    }
    const Value seps = r.GetOr(2, Value::None());
    if (!seps.is_none()) {
      if (!seps.is_list() || seps.list().size() != 2 || !seps.list()[0].is_string() ||
          !seps.list()[1].is_string()) {
        throw Error("tojson separators must be a pair of strings");
      }
      o.has_separators = true;
      o.item_separator = seps.list()[0].as_string();
      o.key_separator = seps.list()[1].as_string();
    }
    o.sort_keys = r.GetOr(3, Value(false)).Truthy();
    return Value(JsonDumps(v, o));
  }
  if (name == "first" || name == "last") {
    ArgReader r(name, args, {});
    ValueList items = v.Iterate();
    if (items.empty()) return Value::Undefined("No " + name + " item, sequence was empty.");
    return name == "first" ? items.front() : items.back();
  }
  if (name == "join") {
    ArgReader r(name, args, {"d", "attribute"});
    const std::string sep = r.GetOr(0, Value("")).Str();
    const Value attr = r.GetOr(1, Value::None());
    std::string out;
    bool first = true;
    for (const Value& item : v.Iterate()) {
      const std::string part = (attr.is_none() ? item : AttrPath(item, attr.Str())).Str();
      CheckStringSize(out.size() + sep.size() + part.size());
      if (!first) out += sep;
      first = false;
      out += part;
    }
    return Value(out);
  }
  if (name == "list") {
    ArgReader r(name, args, {});
    return Value::List(v.Iterate());
  }
  if (name == "items") {
    ArgReader r(name, args, {});
    if (v.is_undefined()) return Value::List();
    if (!v.is_dict()) throw Error("Can only get item pairs from a mapping.");
    ValueList out;
    for (const auto& [k, val] : v.dict().items) out.push_back(Value::Tuple({Value(k), val}));
    return Value::List(std::move(out));
  }
  if (name == "reverse") {
    ArgReader r(name, args, {});
    if (v.is_string()) {
      auto cps = SplitCodePoints(v.as_string());
      std::string out;
      for (auto it = cps.rbegin(); it != cps.rend(); ++it) out.append(*it);
      return Value(out);
    }
    ValueList items = v.Iterate();
    std::reverse(items.begin(), items.end());
    return Value::List(std::move(items));
  }
  if (name == "abs") {
    ArgReader r(name, args, {});
    if (v.kind() == Value::Kind::kFloat) return Value(std::fabs(v.as_float()));
    if (v.is_int()) {
      if (v.as_int() == INT64_MIN) throw Error("integer overflow");
      return Value(v.as_int() < 0 ? -v.as_int() : v.as_int());
    }
    throw Error("bad operand type for abs(): '" + v.TypeName() + "'");
  }
  if (name == "int" || name == "float" || name == "indent") {
    v.RequireDefined();  // int(Undefined), Undefined + "\n" raise in Jinja2; no default applies
  }
  if (name == "int") {
    ArgReader r(name, args, {"default", "base"});
    const Value dflt = r.GetOr(0, Value(int64_t{0}));
    if (v.is_int()) return Value(v.as_int());
    if (v.kind() == Value::Kind::kFloat) {
      if (!std::isfinite(v.as_float())) return dflt;
      return Value(static_cast<int64_t>(v.as_float()));
    }
    if (v.is_string()) {
      const std::string s = PyStrip(v.as_string(), nullptr, true, true);
      int64_t i;
      double f;
      if (PyParseInt(s, &i)) return Value(i);
      if (PyParseFloat(s, &f) && std::isfinite(f)) return Value(static_cast<int64_t>(f));
    }
    return dflt;
  }
  if (name == "float") {
    ArgReader r(name, args, {"default"});
    if (v.is_number()) return Value(v.as_float());
    if (v.is_string()) {
      double f;
      if (PyParseFloat(PyStrip(v.as_string(), nullptr, true, true), &f)) return Value(f);
    }
    return r.GetOr(0, Value(0.0));
  }
  if (name == "map") {
    ValueList out;
    std::string attr;
    Value dflt = Value::Undefined();
    for (const auto& [k, val] : args.keyword) {
      if (k == "attribute") {
        attr = val.Str();
      } else if (k == "default") {
        dflt = val;
      } else if (args.positional.empty()) {
        throw Error("map() got an unexpected keyword argument '" + k + "'");
      }
    }
    if (!attr.empty()) {
      for (const Value& item : v.Iterate()) {
        Value got = AttrPath(item, attr);
        out.push_back(got.is_undefined() && !dflt.is_undefined() ? dflt : got);
      }
      return Value::List(std::move(out));
    }
    if (args.positional.empty() || !args.positional[0].is_string()) {
      throw Error("map() needs a filter name or attribute=");
    }
    const std::string filter = args.positional[0].as_string();
    if (!IsSupportedFilter(filter)) throw Error("unsupported filter '" + filter + "'");
    CallArgs rest = Rest(args, 1);
    for (const Value& item : v.Iterate()) {
      CallArgs a = rest;
      out.push_back(ApplyFilter(filter, item, a));
    }
    return Value::List(std::move(out));
  }
  if (name == "select" || name == "reject") return SelectOrReject(v, args, name == "select", false);
  if (name == "selectattr" || name == "rejectattr") {
    return SelectOrReject(v, args, name == "selectattr", true);
  }
  if (name == "unique") {
    ArgReader r(name, args, {"case_sensitive", "attribute"});
    const bool cs = r.GetOr(0, Value(false)).Truthy();
    const Value attr = r.GetOr(1, Value::None());
    ValueList out, seen;
    for (const Value& item : v.Iterate()) {
      const Value key = SortKey(attr.is_none() ? item : AttrPath(item, attr.Str()), cs);
      if (std::none_of(seen.begin(), seen.end(), [&](const Value& s) { return s.Equals(key); })) {
        seen.push_back(key);
        out.push_back(item);
      }
    }
    return Value::List(std::move(out));
  }
  if (name == "sort") {
    ArgReader r(name, args, {"reverse", "case_sensitive", "attribute"});
    const bool rev = r.GetOr(0, Value(false)).Truthy();
    const bool cs = r.GetOr(1, Value(false)).Truthy();
    const Value attr = r.GetOr(2, Value::None());
    ValueList items = v.Iterate();
    auto key = [&](const Value& x) {
      return SortKey(attr.is_none() ? x : AttrPath(x, attr.Str()), cs);
    };
    std::stable_sort(items.begin(), items.end(), [&](const Value& a, const Value& b) {
      return rev ? key(b).Less(key(a)) : key(a).Less(key(b));
    });
    return Value::List(std::move(items));
  }
  if (name == "indent") {
    ArgReader r(name, args, {"width", "first", "blank"});
    const Value width = r.GetOr(0, Value(int64_t{4}));
    const std::string ind =
        width.is_string()
            ? width.as_string()
            : std::string(static_cast<size_t>(std::max<int64_t>(0, width.as_int())), ' ');
    const bool first = r.GetOr(1, Value(false)).Truthy();
    const bool blank = r.GetOr(2, Value(false)).Truthy();
    std::vector<std::string> lines = SplitLines(v.Str() + "\n");
    std::string out;
    for (size_t i = 0; i < lines.size(); ++i) {
      if (i > 0) out += "\n";
      if (i > 0 && (blank || !lines[i].empty())) out += ind;
      out += lines[i];
    }
    if (first) out = ind + out;
    return Value(out);
  }
  throw Error("unsupported filter '" + name + "'");
}

}  // namespace spqr::jinja
