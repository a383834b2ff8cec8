#include "server/api_keys.h"

#include <cstdlib>
#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace spqr {

bool ConstantTimeEquals(absl::string_view presented, absl::string_view expected) {
  if (expected.empty()) return false;
  // Walk all of `expected` whatever `presented` is; a length mismatch is folded into the result.
  unsigned char diff = presented.size() == expected.size() ? 0 : 1;
  for (size_t i = 0; i < expected.size(); ++i) {
    const unsigned char p =
        presented.empty() ? 0 : static_cast<unsigned char>(presented[i % presented.size()]);
    diff |= static_cast<unsigned char>(p ^ static_cast<unsigned char>(expected[i]));
  }
  return diff == 0;
}

ApiKeys ApiKeys::FromList(const std::vector<std::string>& keys) {
  ApiKeys result;
  for (const std::string& key : keys) {
    if (!key.empty()) result.keys_.push_back(key);
  }
  return result;
}

absl::StatusOr<ApiKeys> ApiKeys::Load(const std::string& file, const std::string& env_var) {
  std::vector<std::string> keys;
  if (!file.empty()) {
    std::ifstream in(file);
    if (!in) {
      return absl::NotFoundError(
          absl::StrCat(file, ": cannot open the API key file (server.auth.api_keys_file)"));
    }
    std::string line;
    size_t found = 0;
    while (std::getline(in, line)) {
      absl::string_view key = absl::StripAsciiWhitespace(line);
      if (key.empty() || key[0] == '#') continue;
      keys.emplace_back(key);
      ++found;
    }
    if (found == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(file, ": the API key file (server.auth.api_keys_file) holds no key"));
    }
  }
  if (!env_var.empty()) {
    const char* value = std::getenv(env_var.c_str());
    size_t found = 0;
    if (value != nullptr) {
      for (absl::string_view key : absl::StrSplit(value, ',')) {
        key = absl::StripAsciiWhitespace(key);
        if (key.empty()) continue;
        keys.emplace_back(key);
        ++found;
      }
    }
    if (found == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("environment variable ", env_var,
                       " (server.auth.api_keys_env) is unset or holds no key"));
    }
  }
  return FromList(keys);
}

int ApiKeys::Find(absl::string_view authorization) const {
  absl::string_view presented = authorization;
  // The scheme is case-insensitive (RFC 7235); the key is not.
  if (presented.size() < 7 || !absl::EqualsIgnoreCase(presented.substr(0, 7), "bearer ")) {
    return -1;
  }
  presented.remove_prefix(7);
  presented = absl::StripAsciiWhitespace(presented);
  int found = -1;
  for (size_t i = 0; i < keys_.size(); ++i) {
    // No early exit: every key is compared whatever matched before.
    if (ConstantTimeEquals(presented, keys_[i])) found = static_cast<int>(i);
  }
  return found;
}

}  // namespace spqr
