// spqr-server's configuration: typed option structs, the table that declares every key once, and
// loading from YAML files and command-line flags.
//
// Every key has exactly one declaration: its name, type, range and description live in the table
// returned by ServerConfigKeys(); its default is the struct member's initializer below. The YAML
// loader, the flag parser, --help and the reference file test (tests/unit/config_test.cc, which
// checks config/spqr-server.yaml against the table) all read that table.
//
// This library depends only on yaml-cpp and absl. The server converts these structs into the
// engine's options.
#pragma once

#include <cstdint>
#include <string>
#include <variant>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace spqr {

// TLS of the gRPC port (empty cert_file: plaintext).
struct TlsSection {
  std::string cert_file;             // PEM certificate chain of the server
  std::string key_file;              // PEM private key of cert_file
  std::string client_ca_file;        // PEM CA bundle that client certificates are verified against
  bool require_client_cert = false;  // mTLS: refuse clients without a certificate of client_ca_file
};

// API keys: clients send "authorization: Bearer <key>" metadata.
struct AuthSection {
  std::string api_keys_file;  // one key per line ('#' comments, blank lines ignored)
  std::string api_keys_env;   // name of an environment variable holding comma-separated keys
  // With keys configured, whether grpc.health.v1.Health and the reflection service answer
  // without a key (Kubernetes gRPC probes send no metadata: keep exempt_health when using them).
  bool exempt_health = true;
  bool exempt_reflection = true;
};

// The gRPC endpoint and process behaviour.
struct ServerSection {
  std::string listen = "127.0.0.1:50051";
  double drain_timeout_seconds = 30.0;
  // 4 MiB (gRPC's own default) holds any request within the default limits; a larger one is
  // refused by gRPC before the server reads it.
  int64_t max_message_bytes = 4 << 20;
  std::string log_level = "info";
  int32_t max_concurrent_streams = 100;  // per HTTP/2 connection; 0 = gRPC's default (no limit)
  int32_t tokenizer_threads = 2;         // the WorkPool that tokenizes requests
  TlsSection tls;
  AuthSection auth;
};

// The Prometheus endpoint.
struct MetricsSection {
  bool enabled = true;
  std::string address = "127.0.0.1";
  int32_t port = 9464;
  bool vllm_compatible_names = true;
};

// Which model to serve and where it runs.
struct ModelSection {
  std::string dir = "models/reference";
  std::string backend = "auto";
  int32_t threads = 0;
  std::string spqr_cpu_kernel = "auto";
  std::string dense_cpu_kernel = "auto";
};

// Engine capacities (converted to spqr::EngineOptions by the server).
struct EngineSection {
  int64_t kv_cache_bytes = int64_t{256} << 20;
  int32_t kv_block_size = 16;
  int32_t max_running_requests = 64;
  int32_t max_batched_tokens = 2048;
  int32_t max_queued_requests = 256;
  int64_t max_queued_prompt_tokens = int64_t{1} << 20;
  bool prefix_caching = true;
  int64_t max_step_logits_bytes = int64_t{256} << 20;
};

// Per-request limits the server enforces (INVALID_ARGUMENT beyond them).
struct LimitsSection {
  int32_t max_prompt_tokens = 0;  // 0: the model's context
  int32_t max_new_tokens = 4096;
  int32_t default_max_new_tokens = 256;
  int32_t max_stop_strings = 16;
  int32_t max_stop_string_bytes = 256;
  int32_t max_top_logprobs = 20;
  int32_t max_score_pairs = 64;
};

struct ServerConfig {
  ServerSection server;
  MetricsSection metrics;
  ModelSection model;
  EngineSection engine;
  LimitsSection limits;
};

// A pointer to one typed field of a ServerConfig.
using ConfigFieldPtr = std::variant<bool*, int32_t*, int64_t*, double*, std::string*>;

// One configuration key.
struct ConfigKey {
  absl::string_view name;  // dotted path: "engine.kv_cache_bytes"
  ConfigFieldPtr (*field)(ServerConfig&);
  absl::string_view description;  // one line, shown by --help and in the reference file
  double min = 0;                 // numeric keys: inclusive range
  double max = 0;
  std::vector<absl::string_view> allowed;  // string keys: allowed values (empty: any)
  std::vector<absl::string_view> aliases;  // extra command-line flag names ("model" for model.dir)
};

// The table of every key, in reference-file order.
const std::vector<ConfigKey>& ServerConfigKeys();

// "bool", "int32", "int64", "double" or "string".
absl::string_view ConfigKeyTypeName(const ConfigKey& key);

// The key's current value in `config`, formatted as it would be written in YAML.
std::string FormatConfigValue(const ServerConfig& config, const ConfigKey& key);

// Sets one key from its text form (a YAML scalar or a flag value), checking type and range.
// Errors name the key, the expected type or range, and the offending value.
absl::Status SetConfigValue(const ConfigKey& key, absl::string_view text, ServerConfig* config);

// Applies a YAML document to `config`: every key present overrides its current value. Unknown
// keys, wrong types and out-of-range values are errors naming `source` and the key's path.
absl::Status ApplyConfigYaml(absl::string_view yaml_text, absl::string_view source,
                             ServerConfig* config);

// Reads and applies a YAML file.
absl::Status ApplyConfigFile(const std::string& path, ServerConfig* config);

// Checks relations between keys (e.g. default_max_new_tokens <= max_new_tokens).
absl::Status ValidateServerConfig(const ServerConfig& config);

// Result of parsing spqr-server's command line.
struct ServerCommandLine {
  ServerConfig config;
  bool help = false;        // --help was given: print ServerConfigUsage() and exit
  std::string config_file;  // --config FILE, empty if none
};

// Parses `--config FILE`, `--help` and `--<key>=<value>` / `--<key> <value>` overrides (key is the
// dotted name or an alias; '-' and '_' are interchangeable; a bool flag alone means true). The
// file is applied first, then every override, whatever their order. Positional arguments are
// errors.
absl::StatusOr<ServerCommandLine> ParseServerCommandLine(const std::vector<std::string>& args);

// The --help text: every flag with type, default and description.
std::string ServerConfigUsage(absl::string_view program);

}  // namespace spqr
