// Field readers for tokenizer.json objects: each error names the object and the field.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "engine/tokenizer/hf_regex.h"
#include "nlohmann/json.hpp"

namespace spqr {

// j["type"] of a component object; `what` ("normalizer", "decoder", ...) names it in errors.
absl::StatusOr<std::string> HfType(const nlohmann::json& j, const std::string& what);
absl::StatusOr<const nlohmann::json*> HfArray(const nlohmann::json& j, const char* key,
                                              const std::string& what);
absl::StatusOr<std::string> HfString(const nlohmann::json& j, const char* key,
                                     const std::string& what);
// j[key] as a bool; `fallback` when absent or null.
absl::StatusOr<bool> HfBool(const nlohmann::json& j, const char* key, bool fallback,
                            const std::string& what);
// j["pattern"]: {"String": literal} or {"Regex": pattern}.
absl::StatusOr<std::unique_ptr<HfRegex>> HfPattern(const nlohmann::json& j,
                                                   const std::string& what);
// `text` with every match of `regex` replaced by `content`.
std::string ReplaceAll(const HfRegex& regex, std::string_view text, std::string_view content);

}  // namespace spqr
