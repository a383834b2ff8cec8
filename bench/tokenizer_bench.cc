// spqr-bench-tokenizer: encode and decode throughput of a tokenizer (tokenizer.json or
// tokenizer.model) on a text repeated to at least --bytes (default 10 MB). Prints one JSON
// object: kind, text bytes, tokens, and MB/s (10^6 bytes of text per second) of Encode (one call
// on the whole text, the word cache cold on the first run) and of Decode, best of --repeats.
//   spqr-bench-tokenizer --tokenizer FILE --text FILE [--bytes 10000000] [--repeats 3]
#include <algorithm>
#include <chrono>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>

#include "absl/strings/numbers.h"
#include "engine/tokenizer/tokenizer.h"
#include "nlohmann/json.hpp"

namespace {

double SecondsSince(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

constexpr char kUsage[] =
    "usage: spqr-bench-tokenizer --tokenizer FILE --text FILE [--bytes 10000000] [--repeats 3]\n";

}  // namespace

int main(int argc, char** argv) {
  std::string tokenizer_path, text_path;
  int64_t bytes = 10'000'000;
  int repeats = 3;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      std::cout << kUsage;
      return 0;
    }
    if (i + 1 >= argc) {
      std::cerr << kUsage;
      return 2;
    }
    if (a == "--tokenizer") {
      tokenizer_path = argv[++i];
    } else if (a == "--text") {
      text_path = argv[++i];
    } else if (a == "--bytes" && absl::SimpleAtoi(argv[i + 1], &bytes) && bytes > 0) {
      ++i;
    } else if (a == "--repeats" && absl::SimpleAtoi(argv[i + 1], &repeats) && repeats > 0) {
      ++i;
    } else {
      std::cerr << kUsage;
      return 2;
    }
  }
  if (tokenizer_path.empty() || text_path.empty()) {
    std::cerr << kUsage;
    return 2;
  }
  auto tokenizer = spqr::Tokenizer::Open(tokenizer_path, -1, {});
  if (!tokenizer.ok()) {
    std::cerr << "error: " << tokenizer.status().message() << "\n";
    return 1;
  }
  std::ifstream in(text_path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string unit = ss.str();
  if (!in || unit.empty()) {
    std::cerr << "error: cannot read text from " << text_path << "\n";
    return 1;
  }
  std::string text;
  while (static_cast<int64_t>(text.size()) < bytes) text += unit;

  double encode_cold = 0, encode_best = 1e30, decode_best = 1e30;
  std::vector<int32_t> ids;
  for (int r = 0; r < repeats; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    ids = (*tokenizer)->Encode(text, false);
    const double s = SecondsSince(t0);
    if (r == 0) encode_cold = s;
    encode_best = std::min(encode_best, s);
  }
  size_t decoded_bytes = 0;
  for (int r = 0; r < repeats; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    decoded_bytes = (*tokenizer)->Decode(ids).size();
    decode_best = std::min(decode_best, SecondsSince(t0));
  }
  const double mb = static_cast<double>(text.size()) / 1e6;
  nlohmann::ordered_json out = {
      {"tokenizer", tokenizer_path},         {"kind", (*tokenizer)->kind()},
      {"text_bytes", text.size()},           {"tokens", ids.size()},
      {"decoded_bytes", decoded_bytes},      {"encode_mb_per_s_first_run", mb / encode_cold},
      {"encode_mb_per_s", mb / encode_best}, {"decode_mb_per_s", mb / decode_best}};
  std::cout << out.dump(2) << "\n";
  return 0;
}
