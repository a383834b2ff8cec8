#include "engine/tokenizer/hf_json.h"

#include "absl/strings/str_cat.h"

namespace spqr {

absl::StatusOr<std::string> HfType(const nlohmann::json& j, const std::string& what) {
  if (!j.is_object() || !j.contains("type") || !j["type"].is_string()) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " is not an object with a string \"type\": ", j.dump().substr(0, 200)));
  }
  return j["type"].get<std::string>();
}

absl::StatusOr<const nlohmann::json*> HfArray(const nlohmann::json& j, const char* key,
                                              const std::string& what) {
  if (!j.contains(key) || !j[key].is_array()) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": \"", key, "\" is not an array"));
  }
  return &j[key];
}

absl::StatusOr<std::string> HfString(const nlohmann::json& j, const char* key,
                                     const std::string& what) {
  if (!j.contains(key) || !j[key].is_string()) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": \"", key, "\" is not a string"));
  }
  return j[key].get<std::string>();
}

absl::StatusOr<bool> HfBool(const nlohmann::json& j, const char* key, bool fallback,
                            const std::string& what) {
  if (!j.contains(key) || j[key].is_null()) return fallback;
  if (!j[key].is_boolean()) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": \"", key, "\" is not a boolean"));
  }
  return j[key].get<bool>();
}

absl::StatusOr<std::unique_ptr<HfRegex>> HfPattern(const nlohmann::json& j,
                                                   const std::string& what) {
  if (j.contains("pattern") && j["pattern"].is_object()) {
    const nlohmann::json& p = j["pattern"];
    if (p.contains("String") && p["String"].is_string()) {
      return HfRegex::Literal(p["String"].get<std::string>());
    }
    if (p.contains("Regex") && p["Regex"].is_string()) {
      return HfRegex::Compile(p["Regex"].get<std::string>());
    }
  }
  return absl::InvalidArgumentError(
      absl::StrCat(what, ": \"pattern\" is not {\"String\": ...} or {\"Regex\": ...}"));
}

std::string ReplaceAll(const HfRegex& regex, std::string_view text, std::string_view content) {
  std::string out;
  size_t prev = 0;
  for (const auto& [begin, end] : regex.FindAll(text)) {
    out.append(text.substr(prev, begin - prev));
    out.append(content);
    prev = end;
  }
  out.append(text.substr(prev));
  return out;
}

}  // namespace spqr
