// libFuzzer target for the server's YAML configuration loader (ApplyConfigYaml +
// ValidateServerConfig): every input must be accepted or refused with a status, never crash,
// hang or throw; an accepted config must hold values inside every key's declared range.
//
// Build (clang only): configure with -DSPQR_FUZZ=ON -DCMAKE_CXX_COMPILER=clang++, then build the
// target config_fuzz. Run it with a scratch corpus directory first and tests/fuzz/corpus/config.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <variant>

#include "absl/strings/string_view.h"
#include "config/server_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const absl::string_view yaml(reinterpret_cast<const char*>(data), size);
  spqr::ServerConfig config;
  if (!spqr::ApplyConfigYaml(yaml, "fuzz.yaml", &config).ok()) return 0;
  (void)spqr::ValidateServerConfig(config);
  for (const spqr::ConfigKey& key : spqr::ServerConfigKeys()) {
    const spqr::ConfigFieldPtr field = key.field(config);
    double value = 0;
    bool numeric = true;
    if (auto* p = std::get_if<int32_t*>(&field)) {
      value = **p;
    } else if (auto* p = std::get_if<int64_t*>(&field)) {
      value = static_cast<double>(**p);
    } else if (auto* p = std::get_if<double*>(&field)) {
      value = **p;
    } else {
      numeric = false;
    }
    if (numeric && key.max > key.min && (value < key.min || value > key.max)) std::abort();
  }
  return 0;
}
