// libFuzzer target for the tokenizer.json implementation (engine/tokenizer/hf_tokenizer.h).
// The first byte picks the mode:
//   even: the rest is text, encoded with each committed fixture tokenizer
//         (tests/data/hf-tokenizers/); every id must be in the vocabulary, the decode valid UTF-8,
//         and for the byte-level ones without a normalizer (gpt2, llama3) the decode must give
//         back the text (invalid UTF-8 repaired) when it holds no special token;
//   odd:  the rest is a tokenizer.json: it must load or be refused with a status, and a loaded
//         one must encode and decode a fixed text within its vocabulary.
// Build (clang only): configure with -DSPQR_FUZZ=ON -DCMAKE_CXX_COMPILER=clang++, then build the
// target hf_tokenizer_fuzz. Seeds: tests/fuzz/corpus/hf_tokenizer.
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "engine/tokenizer/hf_tokenizer.h"
#include "engine/tokenizer/utf8.h"

namespace {

const char* const kKinds[] = {"gpt2", "llama3", "qwen2", "llama2", "metaspace"};

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

const std::map<std::string, std::unique_ptr<spqr::Tokenizer>>& Fixtures() {
  static const auto* fixtures = [] {
    auto* m = new std::map<std::string, std::unique_ptr<spqr::Tokenizer>>();
    for (const char* kind : kKinds) {
      const std::string dir = std::string(SPQR_SOURCE_DIR) + "/tests/data/hf-tokenizers/" + kind;
      auto tok = spqr::HfTokenizer::Parse(ReadFile(dir + "/tokenizer.json"),
                                          ReadFile(dir + "/tokenizer_config.json"), kind, -1, {});
      if (!tok.ok()) std::abort();  // the committed fixtures must load
      (*m)[kind] = *std::move(tok);
    }
    return m;
  }();
  return *fixtures;
}

void CheckIds(const spqr::Tokenizer& tok, const std::vector<int32_t>& ids) {
  for (int32_t id : ids) {
    if (id < 0 || id >= tok.vocab_size()) std::abort();
  }
  if (!spqr::utf8::IsValid(tok.Decode(ids))) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string rest(reinterpret_cast<const char*>(data) + 1, size - 1);
  if ((data[0] & 1) == 0) {
    for (const auto& [kind, tok] : Fixtures()) {
      const std::vector<int32_t> ids = tok->Encode(rest, (data[0] & 2) != 0);
      CheckIds(*tok, ids);
      if ((kind == "gpt2" || kind == "llama3") && rest.find("<|") == std::string::npos &&
          tok->Decode(ids) != spqr::utf8::Repair(rest)) {
        std::abort();
      }
    }
    return 0;
  }
  auto tok = spqr::HfTokenizer::Parse(rest, "", "fuzz/tokenizer.json", -1, {});
  if (tok.ok()) CheckIds(**tok, (*tok)->Encode("Hello wörld 日本 <s> 🙂\xff", true));
  return 0;
}
