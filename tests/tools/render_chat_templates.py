#!/usr/bin/env python3
"""Reference renderer for the chat-template tests: Jinja2 set up exactly as Hugging Face
transformers' apply_chat_template sets it up (transformers/utils/chat_template_utils.py:
ImmutableSandboxedEnvironment with trim_blocks and lstrip_blocks, the loopcontrols extension and
the {% generation %} tracker, tojson replaced by json.dumps with ensure_ascii=False and no HTML
escaping, raise_exception and strftime_now globals; rendered with messages, tools=None,
documents=None, add_generation_prompt and the tokenizer's special tokens).

  generate: renders every template of tests/data/chat_templates/templates.json on every message
            list of conversations.json (add_generation_prompt false and true), and each small
            template of snippets.json on one conversation, and writes expected.json, the fixture the C++ test (tests/unit/chat_template_test.cc) compares
            against byte for byte.
  check:    renders again and fails if the committed expected.json differs (ctest
            chat_template.reference; exits 77 = skipped when jinja2 is not importable).

Uses Debian's python3-jinja2 (or any Jinja2 3.x); transformers itself is not needed.
"""
import argparse
import json
import os
import sys
import time
from datetime import datetime

SKIP = 77
# What snippets.json's templates are rendered with.
SNIPPET_CONVERSATION = "multi_turn"
SNIPPET_TOKENS = {"bos_token": "<s>", "eos_token": "</s>"}


def make_env():
    import jinja2
    from jinja2 import nodes
    from jinja2.ext import Extension
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class AssistantTracker(Extension):
        # transformers' {% generation %} block; renders its body unchanged when no assistant mask
        # is requested (apply_chat_template's default).
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
            call = self.call_method("_render", [])
            return nodes.CallBlock(call, [], [], body).set_lineno(lineno)

        def _render(self, caller):
            return caller()

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[AssistantTracker, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    return env, jinja2


def render_all(data_dir):
    env, jinja2 = make_env()
    with open(os.path.join(data_dir, "templates.json"), encoding="utf-8") as f:
        templates = json.load(f)["templates"]
    with open(os.path.join(data_dir, "conversations.json"), encoding="utf-8") as f:
        conv_file = json.load(f)
    now = conv_file["now_epoch_seconds"]
    os.environ["TZ"] = "UTC"
    time.tzset()
    env.globals["strftime_now"] = lambda fmt: datetime.fromtimestamp(now).strftime(fmt)
    cases = []
    for t in templates:
        with open(os.path.join(data_dir, t["file"]), encoding="utf-8") as f:
            compiled = env.from_string(f.read())
        special = {k: t[k] for k in ("bos_token", "eos_token") if t.get(k) is not None}
        for conv in conv_file["conversations"]:
            for agp in (False, True):
                kwargs = {**special, **conv.get("vars", {})}
                kwargs.setdefault("tools", None)
                kwargs.setdefault("documents", None)
                case = {"template": t["name"], "conversation": conv["name"],
                        "add_generation_prompt": agp}
                try:
                    case["output"] = compiled.render(messages=conv["messages"],
                                                     add_generation_prompt=agp, **kwargs)
                except jinja2.exceptions.TemplateError as e:
                    # raise_exception and Jinja's own runtime errors (UndefinedError, ...).
                    case["error_type"] = type(e).__name__
                    case["error"] = str(e)
                except (TypeError, ValueError, KeyError, IndexError, AttributeError) as e:
                    case["error_type"] = type(e).__name__
                    case["error"] = str(e)
                cases.append(case)
    # Snippets: small templates probing one behaviour each, rendered on one conversation.
    with open(os.path.join(data_dir, "snippets.json"), encoding="utf-8") as f:
        snippets = json.load(f)["snippets"]
    conv = next(c for c in conv_file["conversations"] if c["name"] == SNIPPET_CONVERSATION)
    snippet_cases = []
    for source in snippets:
        case = {"source": source}
        try:
            compiled = env.from_string(source)
        except jinja2.exceptions.TemplateSyntaxError as e:
            case["parse_error"] = str(e)
            snippet_cases.append(case)
            continue
        try:
            case["output"] = compiled.render(messages=conv["messages"], add_generation_prompt=True,
                                             tools=None, documents=None, **SNIPPET_TOKENS)
        except jinja2.exceptions.TemplateError as e:
            case["error_type"] = type(e).__name__
            case["error"] = str(e)
        except (TypeError, ValueError, KeyError, IndexError, AttributeError,
                ZeroDivisionError, OverflowError) as e:
            case["error_type"] = type(e).__name__
            case["error"] = str(e)
        snippet_cases.append(case)
    return {"_comment": "Generated by tests/tools/render_chat_templates.py generate; do not edit.",
            "jinja2_version": jinja2.__version__, "cases": cases, "snippets": snippet_cases}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mode", choices=["generate", "check"])
    ap.add_argument("--data", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                   "..", "data", "chat_templates"))
    args = ap.parse_args()
    try:
        import jinja2  # noqa: F401
    except ImportError:
        print("SKIP: jinja2 is not importable (Debian: apt-get install python3-jinja2)")
        return SKIP
    result = render_all(args.data)
    path = os.path.join(args.data, "expected.json")
    text = json.dumps(result, ensure_ascii=False, indent=1) + "\n"
    if args.mode == "generate":
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        print(f"wrote {len(result['cases'])} cases to {path}")
        return 0
    with open(path, encoding="utf-8") as f:
        committed = json.load(f)
    # The Jinja2 version may differ from the one that generated the fixture; the renders may not.
    committed.pop("jinja2_version", None)
    result.pop("jinja2_version", None)
    if committed != result:
        for a, b in zip(committed["cases"] + committed.get("snippets", []),
                        result["cases"] + result["snippets"]):
            if a != b:
                print("MISMATCH", json.dumps(a, ensure_ascii=False), "\n  now:",
                      json.dumps(b, ensure_ascii=False))
        print("expected.json is stale: run tests/tools/render_chat_templates.py generate")
        return 1
    print(f"reference renders match expected.json ({len(result['cases'])} cases)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
