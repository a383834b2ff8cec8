// libFuzzer target for chat templates (engine/chat): any template text must be parsed or refused
// with a status, and a parsed template rendered or refused with a status, never crash, hang or
// throw. Templates come from model directories, which the server does not control.
//
// Build (clang only): configure with -DSPQR_FUZZ=ON -DCMAKE_CXX_COMPILER=clang++, then build the
// target chat_template_fuzz. Seeds: tests/fuzz/corpus/chat_template (real templates).
#include <cstdint>
#include <string_view>

#include "engine/chat/chat_template.h"

namespace {

// Messages exercising the fields templates read: system prompt, alternation, tool calls and
// results, content-part lists, Unicode.
const nlohmann::ordered_json& Messages() {
  static const auto* messages = new nlohmann::ordered_json(nlohmann::ordered_json::parse(R"([
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": " Hi \u00e9 \ud83d\ude00 "},
    {"role": "assistant", "content": "", "tool_calls": [{"id": "abc123def", "type": "function",
      "function": {"name": "f", "arguments": {"x": 1, "y": [true, null, 2.5]}}}]},
    {"role": "tool", "tool_call_id": "abc123def", "content": "{\"ok\": 1}"},
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "and this?"}]}
  ])"));
  return *messages;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view source(reinterpret_cast<const char*>(data), size);
  auto tmpl = spqr::ChatTemplate::Parse(source);
  if (!tmpl.ok()) return 0;
  spqr::ChatRenderOptions options;
  options.add_generation_prompt = true;
  options.bos_token = "<s>";
  options.eos_token = "</s>";
  options.now = [] { return int64_t{1733312096}; };
  (void)tmpl->RenderJson(Messages(), options);
  return 0;
}
