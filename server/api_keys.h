// API keys of spqr-server: clients authenticate spqr.v1.SpqrService calls (and health and
// reflection calls unless server.auth.exempt_health / exempt_reflection) with the metadata
// "authorization: Bearer <key>" (checked by AuthenticateCall, server/call_auth.h). Keys come from
// a file (server.auth.api_keys_file, one per line) and/or an environment variable
// (server.auth.api_keys_env, comma-separated).
#pragma once

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace spqr {

class ApiKeys {
 public:
  // No keys: every call is allowed.
  ApiKeys() = default;

  // Loads the keys named by the config. An empty `file` and `env_var` give no keys (auth off).
  // Errors (NOT_FOUND / INVALID_ARGUMENT) name the file or variable: unreadable file, unset or
  // empty variable, a source that holds no key.
  static absl::StatusOr<ApiKeys> Load(const std::string& file, const std::string& env_var);
  // From a list (tests). Empty keys are dropped.
  static ApiKeys FromList(const std::vector<std::string>& keys);

  bool enabled() const { return !keys_.empty(); }
  size_t size() const { return keys_.size(); }

  // Whether the value of an "authorization" header ("Bearer <key>") holds one of the keys.
  // Every key is compared in full whatever matches, so the time taken does not reveal how much
  // of a key a guess got right.
  bool Accepts(absl::string_view authorization) const { return Find(authorization) >= 0; }
  // The index of the key that `authorization` holds, -1 for none (same constant-time walk).
  int Find(absl::string_view authorization) const;

 private:
  std::vector<std::string> keys_;
};

// Constant-time (in the length of `expected`) comparison of a presented key with a configured
// one.
bool ConstantTimeEquals(absl::string_view presented, absl::string_view expected);

}  // namespace spqr
