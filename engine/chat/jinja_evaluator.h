// Renders a parsed chat template with Jinja2's runtime semantics: for-loop bodies get a fresh
// scope each iteration (a `set` inside a loop is invisible after it; namespaces carry state out),
// `if` shares its scope, macros see the template's top-level variables, undefined names render as
// "" but fail on attribute access or arithmetic, as under Jinja2's default Undefined.
#pragma once

#include <string>

#include "engine/chat/jinja_builtins.h"
#include "engine/chat/jinja_parser.h"

namespace spqr::jinja {

// Renders `tmpl` with `vars` (the template's context). Throws jinja::Error (with the line/column
// of the failing statement or expression) on any runtime error, including raise_exception.
std::string RenderTemplate(const Template& tmpl, const ValueDict& vars,
                           const GlobalsConfig& globals);

}  // namespace spqr::jinja
