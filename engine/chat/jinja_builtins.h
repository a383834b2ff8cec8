// The builtins of the chat-template engine, with Jinja2 (and transformers') semantics:
// attribute/item lookup (environment.getattr/getitem), filters, tests, str/dict methods, the
// global functions (range, namespace, dict, raise_exception, strftime_now) and the operators.
// All throw jinja::Error on failure, as Jinja raises.
#pragma once

#include <functional>
#include <string>

#include "engine/chat/jinja_value.h"

namespace spqr::jinja {

// obj.name: Python attribute first (str/dict methods become bound callables), then obj[name];
// missing -> Undefined (accessing anything on an Undefined throws its "is undefined" error).
Value GetAttr(const Value& obj, const std::string& name);
// obj[key]: item first, then attribute for string keys; missing -> Undefined.
Value GetItem(const Value& obj, const Value& key);
// obj[start:stop:step] with Python's slice semantics (null pointers: omitted).
Value Slice(const Value& obj, const Value* start, const Value* stop, const Value* step);

Value ApplyFilter(const std::string& name, const Value& input, CallArgs& args);
bool ApplyTest(const std::string& name, const Value& input, CallArgs& args);

// Binary arithmetic with Python semantics: + - * / // % **.
Value BinaryOp(const std::string& op, const Value& a, const Value& b);
// ==, !=, <, <=, >, >=, in, notin.
bool CompareOp(const std::string& op, const Value& a, const Value& b);

// The template's globals besides the caller's variables: range, namespace, dict,
// raise_exception, strftime_now. `now` supplies strftime_now's time (seconds since the epoch,
// local time zone), so renders can be reproducible.
struct GlobalsConfig {
  std::function<int64_t()> now;
};
Value GlobalFunction(const std::string& name, const GlobalsConfig& config);
// transformers' namespace refuses attribute names starting with '_' (sandbox hardening).
void CheckNamespaceAttribute(const std::string& name);

// Reads Python-style call arguments: positional index or keyword name, with defaults; refuses
// unknown keywords and surplus positionals, naming the callee.
class ArgReader {
 public:
  ArgReader(const std::string& callee, CallArgs& args, std::vector<std::string> params);
  // The argument for params[i], or nullptr when not given.
  const Value* Get(size_t i) const;
  Value GetOr(size_t i, Value fallback) const;

 private:
  std::vector<const Value*> bound_;
};

}  // namespace spqr::jinja
