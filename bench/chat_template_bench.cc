// spqr-bench-chat-template: what rendering a chat template costs (engine/chat). Parses each
// template of tests/data/chat_templates/templates.json and renders it on a synthetic conversation
// of --messages alternating user/assistant turns of --chars characters each; prints one JSON
// object per template: parse time, render time (best of --repeats) and output size.
//   spqr-bench-chat-template [--messages 64] [--chars 400] [--repeats 20]
#include <algorithm>
#include <chrono>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>

#include "absl/strings/numbers.h"
#include "engine/chat/chat_template.h"
#include "nlohmann/json.hpp"

namespace {

using json = nlohmann::ordered_json;

double UsSince(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t).count();
}

std::string ReadText(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

constexpr char kUsage[] =
    "usage: spqr-bench-chat-template [--messages 64] [--chars 400] [--repeats 20]\n";

}  // namespace

int main(int argc, char** argv) {
  int messages = 64, chars = 400, repeats = 20;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    int* target = a == "--messages"  ? &messages
                  : a == "--chars"   ? &chars
                  : a == "--repeats" ? &repeats
                                     : nullptr;
    if (target == nullptr || i + 1 >= argc || !absl::SimpleAtoi(argv[++i], target) || *target < 1) {
      std::cerr << kUsage;
      return 2;
    }
  }
  const std::string dir = std::string(SPQR_SOURCE_DIR) + "/tests/data/chat_templates/";
  const json templates = json::parse(ReadText(dir + "templates.json"))["templates"];
  json conversation = json::array();
  for (int m = 0; m < messages; ++m) {
    std::string content;
    while (static_cast<int>(content.size()) < chars) content += "word é 😀 ";
    content.resize(static_cast<size_t>(chars));
    conversation.push_back({{"role", m % 2 == 0 ? "user" : "assistant"}, {"content", content}});
  }
  for (const json& t : templates) {
    const std::string name = t["name"].get<std::string>();
    if (name.rfind("features", 0) == 0) continue;  // synthetic probes, not model templates
    const std::string source = ReadText(dir + t["file"].get<std::string>());
    auto start = std::chrono::steady_clock::now();
    auto tmpl = spqr::ChatTemplate::Parse(source);
    const double parse_us = UsSince(start);
    if (!tmpl.ok()) {
      std::cerr << name << ": " << tmpl.status() << "\n";
      return 1;
    }
    spqr::ChatRenderOptions options;
    options.add_generation_prompt = true;
    options.bos_token = "<s>";
    options.eos_token = "</s>";
    double best = 1e30;
    size_t bytes = 0;
    for (int r = 0; r < repeats; ++r) {
      start = std::chrono::steady_clock::now();
      auto out = tmpl->RenderJson(conversation, options);
      best = std::min(best, UsSince(start));
      if (!out.ok()) {
        std::cerr << name << ": " << out.status() << "\n";
        return 1;
      }
      bytes = out->size();
    }
    std::cout << json{{"template", name},
                      {"messages", messages},
                      {"chars_per_message", chars},
                      {"parse_us", parse_us},
                      {"render_us_best", best},
                      {"output_bytes", bytes},
                      {"output_mb_per_s", bytes / best}}
                     .dump()
              << "\n";
  }
  return 0;
}
