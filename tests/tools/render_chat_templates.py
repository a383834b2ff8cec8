#!/usr/bin/env python3
"""Reference renderer for the chat-template tests: Jinja2 set up exactly as Hugging Face
transformers' apply_chat_template sets it up (transformers/utils/chat_template_utils.py, 5.x:
ImmutableSandboxedEnvironment with trim_blocks and lstrip_blocks, the loopcontrols extension and
the {% generation %} tracker, tojson replaced by json.dumps with ensure_ascii=False and no HTML
escaping, raise_exception and strftime_now globals, a namespace that refuses '_' attributes;
messages normalized as apply_chat_template does: empty conversations refused, None-valued keys
dropped, reasoning aliased; rendered with messages, tools=None, documents=None,
add_generation_prompt and the tokenizer's special tokens).

  generate: renders every template of tests/data/chat_templates/templates.json on every message
            list of conversations.json (add_generation_prompt false and true), and each small
            template of snippets.json on one conversation, and writes expected.json, the fixture the C++ test (tests/unit/chat_template_test.cc) compares
            against byte for byte.
  check:    renders again and fails if the committed expected.json differs (ctest
            chat_template.reference; exits 77 = skipped when jinja2 is not importable).
  transformers: renders every case with the real transformers.apply_chat_template (a tiny
            WordLevel tokenizer carrying the template and special tokens) and fails if any output
            differs from expected.json (errors must be errors). Needs `pip install transformers
            jinja2` (not part of the build; exits 77 when missing). It checks this emulation.

generate/check use Debian's python3-jinja2 (or any Jinja2 3.x); transformers is not needed.
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

    class TemplateNamespace(jinja2.utils.Namespace):
        # transformers' namespace: no underscore-prefixed attributes.
        def __init__(*args, **kwargs):
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for name in attrs:
                TemplateNamespace._check_name(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name, value):
            TemplateNamespace._check_name(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check_name(name):
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(
                    "Chat templates cannot store underscore-prefixed attributes on a namespace, "
                    f"but got {name!r}. Please rename the attribute.")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[AssistantTracker, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["namespace"] = TemplateNamespace
    return env, jinja2


REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


def normalize_messages(messages):
    """apply_chat_template's message preparation (transformers 5.x _normalize_chat_messages and
    _alias_reasoning_fields). Raises ValueError for an empty conversation, as transformers does."""
    if not messages:
        raise ValueError("Cannot apply chat template to an empty conversation.")
    out = []
    for message in messages:
        message = {k: v for k, v in message.items() if v is not None}
        reasoning = next((message[k] for k in REASONING_FIELDS if message.get(k) is not None), None)
        if reasoning is not None:
            message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
        out.append(message)
    return out


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
                    case["output"] = compiled.render(messages=normalize_messages(conv["messages"]),
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
            case["output"] = compiled.render(messages=normalize_messages(conv["messages"]),
                                             add_generation_prompt=True,
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


def check_with_transformers(data_dir):
    """Renders every fixture case with transformers.apply_chat_template itself."""
    try:
        import transformers
        import transformers.utils.chat_template_utils as ctu
        from tokenizers import Tokenizer
        from tokenizers.models import WordLevel
        from transformers import PreTrainedTokenizerFast
    except ImportError as e:
        print(f"SKIP: transformers is not importable ({e})")
        return SKIP
    with open(os.path.join(data_dir, "templates.json"), encoding="utf-8") as f:
        templates = json.load(f)["templates"]
    with open(os.path.join(data_dir, "conversations.json"), encoding="utf-8") as f:
        conv_file = json.load(f)
    with open(os.path.join(data_dir, "expected.json"), encoding="utf-8") as f:
        expected = {(c["template"], c["conversation"], c["add_generation_prompt"]): c
                    for c in json.load(f)["cases"]}
    now = conv_file["now_epoch_seconds"]
    os.environ["TZ"] = "UTC"
    time.tzset()

    class PinnedClock(datetime):  # strftime_now reads datetime.now()
        @classmethod
        def now(cls, tz=None):
            return datetime.fromtimestamp(now, tz)

    ctu.datetime = PinnedClock
    agree = differ = 0
    for t in templates:
        with open(os.path.join(data_dir, t["file"]), encoding="utf-8") as f:
            source = f.read()
        special = {k: t[k] for k in ("bos_token", "eos_token") if t.get(k) is not None}
        vocab = {"<unk>": 0, **{v: i + 1 for i, v in enumerate(special.values())}}
        tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel(vocab, unk_token="<unk>")),
                                      unk_token="<unk>", **special)
        tok.chat_template = source
        for conv in conv_file["conversations"]:
            for agp in (False, True):
                want = expected[(t["name"], conv["name"], agp)]
                kwargs = dict(conv.get("vars", {}))
                tools = kwargs.pop("tools", None)
                try:
                    got = {"output": tok.apply_chat_template(
                        conv["messages"], tools=tools, tokenize=False, add_generation_prompt=agp,
                        **kwargs)}
                except Exception as e:  # noqa: BLE001 - any failure must match a fixture failure
                    got = {"error": f"{type(e).__name__}: {e}"}
                if ("output" in want) == ("output" in got) and got.get("output") == want.get("output"):
                    agree += 1
                else:
                    differ += 1
                    print("DIFFERS", t["name"], conv["name"], agp,
                          "\n  transformers:", json.dumps(got, ensure_ascii=False)[:400],
                          "\n  fixture:     ", json.dumps(want, ensure_ascii=False)[:400])
    print(f"transformers {transformers.__version__}: {agree} cases agree with expected.json, "
          f"{differ} differ")
    return 1 if differ else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mode", choices=["generate", "check", "transformers"])
    ap.add_argument("--data", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                   "..", "data", "chat_templates"))
    args = ap.parse_args()
    if args.mode == "transformers":
        return check_with_transformers(args.data)
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
