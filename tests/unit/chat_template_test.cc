// Chat templates (engine/chat): byte-identical renders against Jinja2 as transformers sets it up
// (the fixture tests/data/chat_templates/expected.json comes from
// tests/tools/render_chat_templates.py), load-time refusal of unsupported constructs, errors
// raised by templates, and reading templates from model directories.
#include "engine/chat/chat_template.h"

#include <cstdlib>
#include <ctime>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/unit/safetensors_test_util.h"

namespace spqr {
namespace {

using ::spqr::testing::TempDir;
using ::testing::HasSubstr;
using json = nlohmann::ordered_json;

const std::string kDataDir = std::string(SPQR_SOURCE_DIR) + "/tests/data/chat_templates/";

std::string ReadText(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << "cannot open " << path;
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Where two renders first differ, with some context (the full texts are long).
std::string FirstDifference(const std::string& got, const std::string& want) {
  size_t i = 0;
  while (i < got.size() && i < want.size() && got[i] == want[i]) ++i;
  const size_t from = i < 40 ? 0 : i - 40;
  return "first difference at byte " + std::to_string(i) + "\n  got:  ..." + got.substr(from, 80) +
         "\n  want: ..." + want.substr(from, 80);
}

json ReadJson(const std::string& path) { return json::parse(ReadText(path)); }

void WriteText(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
}

// strftime_now renders in local time; the reference renders in UTC.
class ChatTemplateFixtureTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    setenv("TZ", "UTC", 1);
    tzset();
  }
};

TEST_F(ChatTemplateFixtureTest, RendersByteIdenticalToJinja2) {
  const json templates = ReadJson(kDataDir + "templates.json")["templates"];
  const json conv_file = ReadJson(kDataDir + "conversations.json");
  const json expected = ReadJson(kDataDir + "expected.json")["cases"];
  const int64_t now = conv_file["now_epoch_seconds"].get<int64_t>();

  std::map<std::string, json> template_info;
  std::map<std::string, ChatTemplate> parsed;
  for (const json& t : templates) {
    const std::string name = t["name"].get<std::string>();
    template_info[name] = t;
    auto tmpl = ChatTemplate::Parse(ReadText(kDataDir + t["file"].get<std::string>()));
    ASSERT_TRUE(tmpl.ok()) << name << ": " << tmpl.status();
    parsed.emplace(name, *std::move(tmpl));
  }
  std::map<std::string, json> conversations;
  for (const json& c : conv_file["conversations"]) conversations[c["name"].get<std::string>()] = c;

  ASSERT_GE(expected.size(), 200u);
  int outputs = 0, raised = 0, runtime_errors = 0;
  for (const json& c : expected) {
    const std::string tname = c["template"].get<std::string>();
    const std::string cname = c["conversation"].get<std::string>();
    SCOPED_TRACE(tname + " / " + cname + " / add_generation_prompt=" +
                 (c["add_generation_prompt"].get<bool>() ? "true" : "false"));
    const json& info = template_info.at(tname);
    const json& conv = conversations.at(cname);
    ChatRenderOptions options;
    options.add_generation_prompt = c["add_generation_prompt"].get<bool>();
    if (info["bos_token"].is_string()) options.bos_token = info["bos_token"].get<std::string>();
    if (info["eos_token"].is_string()) options.eos_token = info["eos_token"].get<std::string>();
    if (conv.contains("vars")) options.extra_vars = conv["vars"];
    options.now = [now] { return now; };
    auto rendered = parsed.at(tname).RenderJson(conv["messages"], options);
    if (c.contains("output")) {
      ++outputs;
      ASSERT_TRUE(rendered.ok()) << rendered.status();
      const std::string want = c["output"].get<std::string>();
      EXPECT_TRUE(*rendered == want) << FirstDifference(*rendered, want);
    } else {
      ASSERT_FALSE(rendered.ok()) << "Jinja2 failed with " << c["error"] << " but we rendered:\n"
                                  << *rendered;
      EXPECT_EQ(rendered.status().code(), absl::StatusCode::kInvalidArgument);
      if (c["error_type"] == "TemplateError") {  // raise_exception: the template's own message
        ++raised;
        EXPECT_EQ(rendered.status().message(),
                  "chat template rejected the messages: " + c["error"].get<std::string>());
      } else if (cname == "empty_list") {  // refused before rendering, as transformers does
        EXPECT_THAT(rendered.status().message(), HasSubstr("empty conversation"));
      } else {
        ++runtime_errors;
        EXPECT_THAT(rendered.status().message(), HasSubstr("chat template rendering failed"));
      }
    }
  }
  // The fixture covers successes and both kinds of failure.
  EXPECT_GT(outputs, 150);
  EXPECT_GT(raised, 20);
  EXPECT_GT(runtime_errors, 5);
}

// Small templates probing one behaviour each (snippets.json), rendered on the multi_turn
// conversation: output, runtime error and syntax error must all agree with Jinja2.
TEST_F(ChatTemplateFixtureTest, SnippetsMatchJinja2) {
  const json conv_file = ReadJson(kDataDir + "conversations.json");
  const json expected = ReadJson(kDataDir + "expected.json")["snippets"];
  json messages;
  for (const json& c : conv_file["conversations"]) {
    if (c["name"] == "multi_turn") messages = c["messages"];
  }
  ASSERT_TRUE(messages.is_array());
  const int64_t now = conv_file["now_epoch_seconds"].get<int64_t>();
  ASSERT_GE(expected.size(), 80u);
  for (const json& c : expected) {
    const std::string source = c["source"].get<std::string>();
    SCOPED_TRACE(source);
    auto t = ChatTemplate::Parse(source);
    if (c.contains("parse_error")) {
      EXPECT_FALSE(t.ok()) << "Jinja2 refuses this template: " << c["parse_error"];
      continue;
    }
    ASSERT_TRUE(t.ok()) << t.status();
    ChatRenderOptions options;
    options.add_generation_prompt = true;
    options.bos_token = "<s>";
    options.eos_token = "</s>";
    options.now = [now] { return now; };
    auto rendered = t->RenderJson(messages, options);
    if (c.contains("output")) {
      ASSERT_TRUE(rendered.ok()) << rendered.status();
      const std::string want = c["output"].get<std::string>();
      EXPECT_TRUE(*rendered == want) << FirstDifference(*rendered, want);
    } else {
      EXPECT_FALSE(rendered.ok()) << "Jinja2 failed with " << c["error"] << "; we rendered "
                                  << *rendered;
      if (!rendered.ok() && c["error_type"] == "TemplateError") {
        EXPECT_EQ(rendered.status().message(),
                  "chat template rejected the messages: " + c["error"].get<std::string>());
      }
    }
  }
}

struct RefusedCase {
  const char* source;
  const char* message;  // substring of the error
  int line;
  int column;
};

TEST(ChatTemplateTest, UnsupportedConstructsAreRefusedAtLoadWithTheirPosition) {
  const RefusedCase cases[] = {
      {"{% include 'x.jinja' %}", "unsupported Jinja construct '{% include %}'", 1, 4},
      {"a\n  {% extends 'base' %}", "unsupported Jinja construct '{% extends %}'", 2, 6},
      {"{% block body %}{% endblock %}", "unsupported Jinja construct '{% block %}'", 1, 4},
      {"{% import 'm' as m %}", "unsupported Jinja construct '{% import %}'", 1, 4},
      {"{% raw %}{{ x }}{% endraw %}", "unsupported Jinja construct '{% raw %}'", 1, 4},
      {"{% with a = 1 %}{% endwith %}", "unsupported Jinja construct '{% with %}'", 1, 4},
      {"{% filter upper %}x{% endfilter %}", "unsupported Jinja construct '{% filter %}'", 1, 4},
      {"{% call m() %}x{% endcall %}", "unsupported Jinja construct '{% call %}'", 1, 4},
      {"{% frobnicate %}", "unknown tag 'frobnicate'", 1, 4},
      {"{{ x | wordwrap }}", "unsupported filter 'wordwrap'", 1, 8},
      {"\n\n{{ messages | dictsort }}", "unsupported filter 'dictsort'", 3, 15},
      {"{% if x is escaped %}{% endif %}", "unsupported test 'escaped'", 1, 12},
      {"{% set l = [] %}{{ l.append(1) }}", "unsupported method 'append()'", 1, 28},
      {"{{ 'a {}'.format(1) }}", "unsupported method 'format()'", 1, 17},
      {"{{ lipsum(2) }}", "unsupported function 'lipsum'", 1, 10},
      {"{% for m in messages recursive %}{% endfor %}", "recursive for loop", 1, 22},
      {"{{ f(*args) }}", "*args/**kwargs", 1, 6},
      {"{% if x %}open", "unexpected end of template: expected 'elif' or 'else' or 'endif'", 1, 15},
      {"{{ x ", "missing '}}'", 1, 1},
      {"{# unterminated", "missing end of comment tag", 1, 1},
      {"{{ 'abc }}", "unterminated string literal", 1, 4},
      {"{{ (1, 2] }}", "unexpected ']', expected ')'", 1, 9},
      {"{% break %}", "'break' outside of a for loop", 1, 4},
      {"{{ 1 + }}", "unexpected '}}'", 1, 8},
      {"{{ x is defined is none }}", "cannot chain multiple tests", 1, 17},
  };
  for (const RefusedCase& c : cases) {
    SCOPED_TRACE(c.source);
    auto t = ChatTemplate::Parse(c.source);
    ASSERT_FALSE(t.ok());
    EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(t.status().message(), HasSubstr(c.message));
    EXPECT_THAT(t.status().message(), HasSubstr("line " + std::to_string(c.line) + ", column " +
                                                std::to_string(c.column)));
  }
}

const json kOneMessage = json::parse(R"([{"role": "user", "content": "hi"}])");

absl::StatusOr<std::string> RenderOnce(const std::string& source,
                                       const json& messages = kOneMessage,
                                       const ChatRenderOptions& options = {}) {
  auto t = ChatTemplate::Parse(source);
  if (!t.ok()) return t.status();
  return t->RenderJson(messages, options);
}

TEST(ChatTemplateTest, RaiseExceptionPropagatesTheTemplatesMessage) {
  auto r = RenderOnce("ok{{ raise_exception('roles must alternate: got ' ~ messages[0].role) }}",
                      json::parse(R"([{"role": "tool", "content": "x"}])"));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(r.status().message(),
            "chat template rejected the messages: roles must alternate: got tool");
}

TEST(ChatTemplateTest, WrongRoleAlternationIsRefusedByMistralsTemplate) {
  auto t = ChatTemplate::Parse(ReadText(kDataDir + "templates/mistral_v03.jinja"));
  ASSERT_TRUE(t.ok()) << t.status();
  ChatRenderOptions options;
  options.bos_token = "<s>";
  options.eos_token = "</s>";
  auto ok = t->Render({{"user", "a", {}}, {"assistant", "b", {}}, {"user", "c", {}}}, options);
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(*ok, "<s>[INST] a[/INST] b</s>[INST] c[/INST]");
  auto bad = t->Render({{"user", "a", {}}, {"user", "b", {}}}, options);
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(bad.status().message(),
              HasSubstr("After the optional system message, conversation roles must alternate"));
}

TEST(ChatTemplateTest, RuntimeErrorsNameTheirPosition) {
  auto undefined_attr = RenderOnce("line1\n{{ nothing.here }}");
  ASSERT_FALSE(undefined_attr.ok());
  EXPECT_THAT(undefined_attr.status().message(),
              HasSubstr("line 2, column 11"));  // the failing '.'
  EXPECT_THAT(undefined_attr.status().message(), HasSubstr("'nothing' is undefined"));
  auto type_error = RenderOnce("{{ 'a' + 1 }}");
  ASSERT_FALSE(type_error.ok());
  EXPECT_THAT(type_error.status().message(), HasSubstr("unsupported operand type(s) for +"));
  auto ns_error = RenderOnce("{% set d = {} %}{% set d.x = 1 %}");
  ASSERT_FALSE(ns_error.ok());
  EXPECT_THAT(ns_error.status().message(), HasSubstr("non-namespace"));
}

TEST(ChatTemplateTest, MessagesCarryExtraFieldsAndVariablesDefaultLikeTransformers) {
  auto t = ChatTemplate::Parse(
      "{% for m in messages %}{{ m.role }}:{{ m.content }}"
      "{% if m.tool_calls is defined %}{{ m.tool_calls | tojson }}{% endif %}|{% endfor %}"
      "tools={{ tools }} docs={{ documents }} bos=[{{ bos_token }}] x={{ x | default('-') }}");
  ASSERT_TRUE(t.ok()) << t.status();
  ChatMessage call{
      "assistant", "",
      json::parse(R"({"tool_calls": [{"name": "f", "arguments": {"b": 1, "a": "é"}}]})")};
  ChatRenderOptions options;
  auto r = t->Render({{"user", "hi", {}}, call}, options);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(*r,
            "user:hi|assistant:[{\"name\": \"f\", \"arguments\": {\"b\": 1, \"a\": \"é\"}}]|"
            "tools=None docs=None bos=[] x=-");
  options.bos_token = "<s>";
  options.extra_vars = json::parse(R"({"x": 5, "tools": []})");
  r = t->Render({{"user", "hi", {}}}, options);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(*r, "user:hi|tools=[] docs=None bos=[<s>] x=5");
  // As in transformers: an empty conversation is refused, null fields are dropped, reasoning is
  // also visible under its other names.
  auto empty = t->Render({}, options);
  EXPECT_EQ(empty.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(empty.status().message(), HasSubstr("empty conversation"));
  auto normalized =
      RenderOnce("{{ messages[0] | tojson }}",
                 json::parse(R"([{"role": "assistant", "content": "x", "tool_calls": null,
                       "reasoning": "r"}])"));
  ASSERT_TRUE(normalized.ok()) << normalized.status();
  EXPECT_EQ(*normalized,
            R"({"thinking": "r", "role": "assistant", "content": "x", "reasoning": "r", )"
            R"("reasoning_content": "r"})");
}

TEST(ChatTemplateTest, ConcurrentRendersOfOneTemplateAgree) {
  auto t = ChatTemplate::Parse(ReadText(kDataDir + "templates/qwen3.jinja"));
  ASSERT_TRUE(t.ok()) << t.status();
  const json messages = json::parse(R"([{"role": "system", "content": "S"},
    {"role": "user", "content": "héllo"}, {"role": "assistant", "content": "<think>x</think>y"},
    {"role": "user", "content": "again"}])");
  auto want = t->RenderJson(messages, {});
  ASSERT_TRUE(want.ok()) << want.status();
  std::vector<std::thread> threads;
  std::vector<int> mismatches(4, 0);
  for (int k = 0; k < 4; ++k) {
    threads.emplace_back([&, k] {
      for (int i = 0; i < 200; ++i) {
        auto got = t->RenderJson(messages, {});
        if (!got.ok() || *got != *want) ++mismatches[k];
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_THAT(mismatches, ::testing::Each(0));
}

TEST(ChatTemplateTest, LoadsTheTemplateOfAModelDirectory) {
  TempDir dir;
  auto missing = LoadModelChatTemplate(dir.path());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr("has no chat template"));

  WriteText(dir.path() + "/tokenizer_config.json", R"({
    "bos_token": {"content": "<s>", "lstrip": false}, "eos_token": "</s>", "pad_token": null,
    "unk_token": "<unk>", "chat_template": "{{ bos_token }}{{ messages[0].content }}{{ eos_token }}"})");
  auto plain = LoadModelChatTemplate(dir.path());
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_EQ(plain->source, "{{ bos_token }}{{ messages[0].content }}{{ eos_token }}");
  EXPECT_EQ(plain->special_tokens.at("bos_token"), "<s>");
  EXPECT_EQ(plain->special_tokens.at("unk_token"), "<unk>");
  EXPECT_EQ(plain->special_tokens.count("pad_token"), 0u);
  auto t = ChatTemplate::Parse(plain->source);
  ASSERT_TRUE(t.ok());
  auto r = t->Render({{"user", "hi", {}}}, plain->MakeOptions(true));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(*r, "<s>hi</s>");

  WriteText(dir.path() + "/tokenizer_config.json", R"({"chat_template": [
    {"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]})");
  auto listed = LoadModelChatTemplate(dir.path());
  ASSERT_TRUE(listed.ok()) << listed.status();
  EXPECT_EQ(listed->source, "D");
  auto named = LoadModelChatTemplate(dir.path(), "tool_use");
  ASSERT_TRUE(named.ok());
  EXPECT_EQ(named->source, "T");
  auto absent = LoadModelChatTemplate(dir.path(), "rag");
  EXPECT_EQ(absent.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(absent.status().message(), HasSubstr("it has: tool_use, default"));

  WriteText(dir.path() + "/chat_template.jinja", "J");  // takes precedence, as in transformers
  auto file = LoadModelChatTemplate(dir.path());
  ASSERT_TRUE(file.ok());
  EXPECT_EQ(file->source, "J");

  WriteText(dir.path() + "/chat_template.jinja", "");
  std::remove((dir.path() + "/chat_template.jinja").c_str());
  WriteText(dir.path() + "/tokenizer_config.json", R"({"chat_template": 3})");
  EXPECT_EQ(LoadModelChatTemplate(dir.path()).status().code(), absl::StatusCode::kInvalidArgument);
  WriteText(dir.path() + "/tokenizer_config.json", "{not json");
  EXPECT_EQ(LoadModelChatTemplate(dir.path()).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ChatTemplateTest, HostileInputFailsCleanly) {
  // Deep nesting, huge ranges and integer overflow are errors, not crashes or hangs.
  EXPECT_FALSE(RenderOnce("{{ range(1000000) | length }}").ok());
  EXPECT_FALSE(RenderOnce("{{ 9223372036854775807 + 1 }}").ok());
  EXPECT_FALSE(RenderOnce("{{ 2 ** 64 }}").ok());
  EXPECT_FALSE(RenderOnce("{{ 1 // 0 }}").ok());
  EXPECT_FALSE(RenderOnce("{{ messages").ok());
  EXPECT_FALSE(RenderOnce("{% for %}").ok());
  EXPECT_FALSE(RenderOnce("{{ (((((((((( }}").ok());
  EXPECT_FALSE(
      RenderOnce("{{ " + std::string(5000, '(') + "1" + std::string(5000, ')') + " }}").ok());
  EXPECT_FALSE(RenderOnce("{{ " + std::string(1000, '-') + "1 }}").ok());
  std::string nested_ifs;
  for (int i = 0; i < 1000; ++i) nested_ifs += "{% if true %}";
  EXPECT_FALSE(RenderOnce(nested_ifs).ok());
  auto recursion = RenderOnce("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}");
  ASSERT_FALSE(recursion.ok());
  EXPECT_THAT(recursion.status().message(), HasSubstr("nested deeper than"));
  // Runaway work and memory are bounded (engine limits; Jinja2 itself has none).
  auto loops = RenderOnce(
      "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}"
      "{% endfor %}");
  ASSERT_FALSE(loops.ok());
  EXPECT_THAT(loops.status().message(), HasSubstr("loop iterations"));
  auto doubling = RenderOnce(
      "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}"
      "{% endfor %}{{ ns.s | length }}");
  ASSERT_FALSE(doubling.ok());
  EXPECT_THAT(doubling.status().message(), HasSubstr("MiB"));
  EXPECT_FALSE(
      RenderOnce("{{ ('x' * 1000000).replace('x', "
                 "'yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy') }}")
          .ok());
  EXPECT_FALSE(RenderOnce("{% set ns = namespace(l=[1]) %}{% for i in range(40) %}{% set ns.l = "
                          "ns.l + ns.l %}{% endfor %}")
                   .ok());
  // Invalid UTF-8 bytes count as one character each and pass through unchanged.
  auto t =
      ChatTemplate::Parse("{{ messages[0].content | trim | length }}|{{ messages[0].content }}");
  ASSERT_TRUE(t.ok());
  auto invalid_utf8 = t->Render({{"user", " \xff ab\xfe ", {}}}, {});
  ASSERT_TRUE(invalid_utf8.ok()) << invalid_utf8.status();
  EXPECT_EQ(*invalid_utf8, "5| \xff ab\xfe ");
}

}  // namespace
}  // namespace spqr
