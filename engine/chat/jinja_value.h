// The value model of the chat-template Jinja engine: the Python objects a Jinja2 template sees
// (None, bool, int, float, str, list, tuple, dict, Jinja's Undefined and namespace, callables),
// with Python's semantics where the rendered text depends on them: str()/repr() formatting,
// truthiness, equality and ordering, and json.dumps (transformers' tojson) formatting.
//
// Strings are UTF-8; operations that count or index characters (len, [i], slicing, iteration)
// work on code points as Python does. Lists, dicts and namespaces are shared by reference like
// Python objects, so `{% set ns.x = ... %}` is seen through every name bound to the namespace.
// Errors are reported by throwing jinja::Error (internal to engine/chat; the public ChatTemplate
// API turns them into absl::Status).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "nlohmann/json.hpp"

namespace spqr::jinja {

// A template error (syntax, type, undefined, raise_exception). `line`/`column` are 1-based
// positions in the template source, 0 when unknown.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message, int line = 0, int column = 0)
      : std::runtime_error(message), line(line), column(column) {}
  int line;
  int column;
  // Set for errors raised by the template itself through raise_exception(): the message is the
  // template's, reported without decoration.
  bool raised_by_template = false;
};

// Bounds that keep a hostile or buggy template from exhausting memory or time (Jinja2 has none;
// real chat templates stay far below them): the size of any string the engine builds, including
// the output; the elements of a list built by + or *; loop iterations plus macro calls per render.
inline constexpr size_t kMaxStringBytes = size_t{32} << 20;
inline constexpr size_t kMaxListItems = size_t{1} << 20;
inline constexpr int64_t kMaxRenderSteps = 1'000'000;
// Throws when a string of `bytes` would exceed kMaxStringBytes.
void CheckStringSize(size_t bytes);

class Value;
using ValueList = std::vector<Value>;

// An insertion-ordered str-keyed dict (Python dicts keep insertion order; tojson and iteration
// depend on it). Lookups are linear: chat messages have a handful of keys.
struct ValueDict {
  std::vector<std::pair<std::string, Value>> items;
  const Value* Find(std::string_view key) const;
  void Set(const std::string& key, Value value);
};

struct CallArgs {
  std::vector<Value> positional;
  std::vector<std::pair<std::string, Value>> keyword;
};

// Builtin functions, bound methods (`s.strip`), macros and loop.cycle.
struct Callable {
  std::string name;
  std::function<Value(CallArgs&)> call;
};

class Value {
 public:
  enum class Kind {
    kUndefined,
    kNone,
    kBool,
    kInt,
    kFloat,
    kString,
    kList,
    kDict,
    kNamespace,
    kCallable
  };

  Value() = default;  // Undefined
  static Value Undefined(std::string hint = "");
  static Value None();
  Value(bool b);                                    // NOLINT(google-explicit-constructor)
  Value(int64_t i);                                 // NOLINT(google-explicit-constructor)
  Value(int i) : Value(static_cast<int64_t>(i)) {}  // NOLINT(google-explicit-constructor)
  Value(double f);                                  // NOLINT(google-explicit-constructor)
  Value(std::string s);                             // NOLINT(google-explicit-constructor)
  Value(const char* s) : Value(std::string(s)) {}   // NOLINT(google-explicit-constructor)
  static Value List(ValueList items = {});
  static Value Tuple(ValueList items);
  static Value Dict(ValueDict dict = {});
  static Value Namespace(ValueDict attrs = {});
  static Value Function(std::string name, std::function<Value(CallArgs&)> fn);
  // JSON (ordered, as given) -> value; objects become dicts, arrays lists.
  static Value FromJson(const nlohmann::ordered_json& json);

  Kind kind() const { return kind_; }
  bool is_undefined() const { return kind_ == Kind::kUndefined; }
  bool is_none() const { return kind_ == Kind::kNone; }
  bool is_string() const { return kind_ == Kind::kString; }
  bool is_int() const {
    return kind_ == Kind::kInt || kind_ == Kind::kBool;
  }  // Python: bool is int
  bool is_number() const { return is_int() || kind_ == Kind::kFloat; }
  bool is_list() const { return kind_ == Kind::kList; }  // list or tuple
  bool is_tuple() const { return kind_ == Kind::kList && tuple_; }
  bool is_dict() const { return kind_ == Kind::kDict; }
  bool is_namespace() const { return kind_ == Kind::kNamespace; }
  bool is_callable() const { return kind_ == Kind::kCallable; }

  bool as_bool() const { return b_; }
  int64_t as_int() const { return kind_ == Kind::kBool ? (b_ ? 1 : 0) : i_; }
  double as_float() const { return kind_ == Kind::kFloat ? f_ : static_cast<double>(as_int()); }
  const std::string& as_string() const { return *s_; }
  ValueList& list() const { return *list_; }
  ValueDict& dict() const { return *dict_; }  // dict or namespace attributes
  const Callable& callable() const { return *fn_; }
  // For an Undefined: what was looked up ("'x' is undefined"), used in error messages.
  const std::string& undefined_hint() const { return hint_; }

  // Python's type name ("str", "int", "dict", ...), for error messages.
  std::string TypeName() const;
  bool Truthy() const;
  // str(value) as Jinja prints it: Undefined -> "", None -> "None", floats as Python repr.
  std::string Str() const;
  // repr(value): strings quoted the way Python quotes them, containers recursively.
  std::string Repr() const;
  // Python ==.
  bool Equals(const Value& other) const;
  // Python <: numbers, strings (by code point), lists/tuples lexicographically; else throws.
  bool Less(const Value& other) const;
  // Throws the undefined error when this is Undefined (any use other than print/test/iterate).
  void RequireDefined() const;

  // The elements Python's iter() yields: list items, dict keys, string characters; Undefined is
  // empty. Throws for non-iterables.
  ValueList Iterate() const;
  // len(): code points of a string, items of a list/dict. Throws for other types.
  int64_t Length() const;

 private:
  Kind kind_ = Kind::kUndefined;
  bool b_ = false;
  bool tuple_ = false;
  int64_t i_ = 0;
  double f_ = 0;
  std::shared_ptr<const std::string> s_;
  std::shared_ptr<ValueList> list_;
  std::shared_ptr<ValueDict> dict_;
  std::shared_ptr<Callable> fn_;
  std::string hint_;
};

// Python's repr() of a float (shortest round-trip digits, "1.0", "1e+16", "inf").
std::string FloatRepr(double f);
// Python's repr() of a str.
std::string StringRepr(std::string_view s);

// json.dumps(value, ensure_ascii=False, indent=indent, separators=separators, sort_keys=...),
// the tojson transformers installs (no HTML escaping). indent < 0 means None; `indent_str` is
// used instead when non-empty (json.dumps accepts a string indent). Throws for values JSON cannot
// hold (Undefined, namespaces, callables), as json.dumps raises TypeError.
struct JsonDumpOptions {
  int indent = -1;
  std::string indent_str;
  bool has_separators = false;
  std::string item_separator;
  std::string key_separator;
  bool sort_keys = false;
  bool ensure_ascii = false;
};
std::string JsonDumps(const Value& value, const JsonDumpOptions& options);

}  // namespace spqr::jinja
