// Parser for the Jinja subset chat templates use, following Jinja2's grammar and operator
// precedence. Accepted statements: if/elif/else, for (with an `if` filter and an else block;
// not recursive), set (names, tuples, namespace attributes, block form), macro, break, continue,
// and transformers' generation block. Expressions: literals, lists, tuples, dicts, attribute and
// item access, slices, calls with keyword arguments, filters, tests, arithmetic, ~, comparisons,
// in / not in, and/or/not, conditional expressions.
//
// Everything else is refused here, at load time, with an error naming the construct and its
// line/column: other tags (include, extends, block, import, raw, with, filter, call, ...),
// filters, tests, methods and functions the evaluator does not implement, *args/**kwargs.
#pragma once

#include <string_view>

#include "engine/chat/jinja_ast.h"

namespace spqr::jinja {

struct Template {
  Body body;
};

// Parses `source`; throws jinja::Error with the position of the problem.
Template ParseTemplate(std::string_view source);

// The names the evaluator implements (the parser refuses any other).
bool IsSupportedFilter(std::string_view name);
bool IsSupportedTest(std::string_view name);
bool IsSupportedMethod(std::string_view name);  // str/dict/list methods callable as x.name(...)
bool IsSupportedGlobalFunction(std::string_view name);

}  // namespace spqr::jinja
