#include "config/server_config.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <limits>
#include <optional>
#include <sstream>
#include <type_traits>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "yaml-cpp/yaml.h"

namespace spqr {
namespace {

// The key's dotted name and an accessor to its field, from one mention of the path.
#define SPQR_CONFIG_KEY(path) #path, [](ServerConfig & c) -> ConfigFieldPtr { return &c.path; }

constexpr double kMaxInt32 = std::numeric_limits<int32_t>::max();
constexpr double kMaxInt64 = 9.0e18;

std::vector<ConfigKey> MakeKeys() {
  return {
      {SPQR_CONFIG_KEY(server.listen),
       "gRPC listen address host:port (port 0 picks a free port; the bound one is printed)",
       0,
       0,
       {},
       {"listen"}},
      {SPQR_CONFIG_KEY(server.drain_timeout_seconds),
       "on SIGTERM/SIGINT, how long in-flight requests may finish before they are cancelled",
       0,
       3600,
       {},
       {"drain_timeout"}},
      {SPQR_CONFIG_KEY(server.max_message_bytes),
       "largest gRPC message accepted or sent, in bytes; larger requests are refused with "
       "RESOURCE_EXHAUSTED before they are read",
       1024,
       kMaxInt32,
       {},
       {}},
      {SPQR_CONFIG_KEY(server.log_level),
       "least severe log level printed to stderr",
       0,
       0,
       {"debug", "info", "warning", "error"},
       {"log_level"}},
      {SPQR_CONFIG_KEY(server.max_concurrent_streams),
       "most concurrent calls (HTTP/2 streams) per client connection (0 = no limit)",
       0,
       kMaxInt32,
       {},
       {}},
      {SPQR_CONFIG_KEY(server.tokenizer_threads),
       "threads that tokenize prompts and score texts, off the gRPC and engine threads",
       1,
       256,
       {},
       {}},
      {SPQR_CONFIG_KEY(server.tls.cert_file),
       "PEM certificate chain of the server; set (with key_file) to serve TLS instead of "
       "plaintext",
       0,
       0,
       {},
       {}},
      {SPQR_CONFIG_KEY(server.tls.key_file),
       "PEM private key of server.tls.cert_file",
       0,
       0,
       {},
       {}},
      {SPQR_CONFIG_KEY(server.tls.client_ca_file),
       "PEM CA bundle client certificates are verified against (mTLS)",
       0,
       0,
       {},
       {}},
      {SPQR_CONFIG_KEY(server.tls.require_client_cert),
       "refuse clients without a certificate signed by server.tls.client_ca_file",
       0,
       0,
       {},
       {}},
      {SPQR_CONFIG_KEY(server.auth.api_keys_file),
       "file of API keys, one per line; when set (or api_keys_env), spqr.v1 calls need "
       "'authorization: Bearer <key>'",
       0,
       0,
       {},
       {}},
      {SPQR_CONFIG_KEY(server.auth.api_keys_env),
       "name of an environment variable holding comma-separated API keys",
       0,
       0,
       {},
       {}},
      {SPQR_CONFIG_KEY(server.auth.exempt_health),
       "with API keys configured, grpc.health.v1.Health still answers without a key (keep true "
       "for Kubernetes gRPC probes, which send no metadata)",
       0,
       0,
       {},
       {}},
      {SPQR_CONFIG_KEY(server.auth.exempt_reflection),
       "with API keys configured, gRPC server reflection still answers without a key",
       0,
       0,
       {},
       {}},
      {SPQR_CONFIG_KEY(metrics.enabled), "serve Prometheus metrics over HTTP", 0, 0, {}, {}},
      {SPQR_CONFIG_KEY(metrics.address), "address the metrics endpoint binds to", 0, 0, {}, {}},
      {SPQR_CONFIG_KEY(metrics.port),
       "port of the /metrics endpoint (0 picks a free port; the bound one is printed)",
       0,
       65535,
       {},
       {"metrics_port"}},
      {SPQR_CONFIG_KEY(metrics.vllm_compatible_names),
       "also export vllm:num_requests_waiting, vllm:num_requests_running and "
       "vllm:kv_cache_usage_perc for gateways that route on vLLM's names",
       0,
       0,
       {},
       {}},
      {SPQR_CONFIG_KEY(model.dir),
       "model directory (config.json, safetensors, tokenizer.json or tokenizer.model)",
       0,
       0,
       {},
       {"model"}},
      {SPQR_CONFIG_KEY(model.backend),
       "compute backend (auto = cuda when available, else cpu)",
       0,
       0,
       {"auto", "cpu", "cuda"},
       {"backend"}},
      {SPQR_CONFIG_KEY(model.threads),
       "CPU backend threads (0 = all cores)",
       0,
       1024,
       {},
       {"threads"}},
      {SPQR_CONFIG_KEY(model.spqr_cpu_kernel),
       "SpQR matmul kernel of the CPU backend (auto = int8 where the CPU has AVX-512 VNNI/VBMI2, "
       "else exact; docs/cpu-performance.md)",
       0,
       0,
       {"auto", "exact", "int8"},
       {"spqr_cpu_kernel"}},
      {SPQR_CONFIG_KEY(model.dense_cpu_kernel),
       "dense BF16 matmul kernel of the CPU backend (auto = exact; bf16 needs AVX512-BF16; "
       "docs/cpu-performance.md)",
       0,
       0,
       {"auto", "exact", "bf16"},
       {"dense_cpu_kernel"}},
      {SPQR_CONFIG_KEY(engine.kv_cache_bytes),
       "memory budget of the paged KV cache, in bytes",
       1 << 20,
       kMaxInt64,
       {},
       {}},
      {SPQR_CONFIG_KEY(engine.kv_block_size), "tokens per KV cache block", 1, 1024, {}, {}},
      {SPQR_CONFIG_KEY(engine.max_running_requests),
       "most sequences in one engine step",
       1,
       65536,
       {},
       {}},
      {SPQR_CONFIG_KEY(engine.max_batched_tokens),
       "most tokens (prefill chunks + decodes) computed in one engine step",
       1,
       kMaxInt32,
       {},
       {}},
      {SPQR_CONFIG_KEY(engine.max_queued_requests),
       "most waiting requests; beyond it requests fail with RESOURCE_EXHAUSTED",
       1,
       kMaxInt32,
       {},
       {}},
      {SPQR_CONFIG_KEY(engine.max_queued_prompt_tokens),
       "most prompt tokens of waiting requests; beyond it requests fail with RESOURCE_EXHAUSTED",
       1,
       kMaxInt64,
       {},
       {}},
      {SPQR_CONFIG_KEY(engine.prefix_caching),
       "share KV blocks of identical prompt prefixes between requests",
       0,
       0,
       {},
       {}},
      {SPQR_CONFIG_KEY(engine.max_step_logits_bytes),
       "most memory for the prompt logits of scoring requests in one engine step (tokens x "
       "vocabulary x 4 bytes); longer prompts are scored in chunks",
       1 << 20,
       kMaxInt64,
       {},
       {}},
      {SPQR_CONFIG_KEY(limits.max_prompt_tokens),
       "longest accepted prompt in tokens (0 = the model's context length)",
       0,
       kMaxInt32,
       {},
       {}},
      {SPQR_CONFIG_KEY(limits.max_new_tokens),
       "largest accepted stopping.max_new_tokens",
       1,
       kMaxInt32,
       {},
       {}},
      {SPQR_CONFIG_KEY(limits.default_max_new_tokens),
       "max_new_tokens of requests that leave it unset",
       1,
       kMaxInt32,
       {},
       {}},
      {SPQR_CONFIG_KEY(limits.max_stop_strings), "most stop strings per request", 0, 1024, {}, {}},
      {SPQR_CONFIG_KEY(limits.max_stop_string_bytes),
       "longest stop string, in bytes",
       1,
       65536,
       {},
       {}},
      {SPQR_CONFIG_KEY(limits.max_top_logprobs), "largest accepted top_logprobs", 0, 1024, {}, {}},
      {SPQR_CONFIG_KEY(limits.max_score_pairs),
       "most (context, continuation) pairs per Score request",
       1,
       65536,
       {},
       {}},
  };
}

#undef SPQR_CONFIG_KEY

const ConfigKey* FindKey(absl::string_view name) {
  for (const ConfigKey& key : ServerConfigKeys()) {
    if (key.name == name) return &key;
  }
  return nullptr;
}

// Whether `path` names a section (a prefix of some key), e.g. "engine".
bool IsSection(absl::string_view path) {
  for (const ConfigKey& key : ServerConfigKeys()) {
    if (key.name.size() > path.size() && key.name.substr(0, path.size()) == path &&
        key.name[path.size()] == '.') {
      return true;
    }
  }
  return false;
}

size_t EditDistance(absl::string_view a, absl::string_view b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = above;
    }
  }
  return row[b.size()];
}

// " (did you mean 'engine.kv_cache_bytes'?)" for a near miss, else "".
std::string Suggestion(absl::string_view unknown) {
  const ConfigKey* best = nullptr;
  size_t best_distance = 4;  // suggest only close matches
  for (const ConfigKey& key : ServerConfigKeys()) {
    size_t d = EditDistance(unknown, key.name);
    if (d < best_distance) {
      best_distance = d;
      best = &key;
    }
  }
  return best ? absl::StrCat(" (did you mean '", best->name, "'?)") : "";
}

absl::string_view YamlNodeKind(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Map:
      return "a map";
    case YAML::NodeType::Sequence:
      return "a list";
    case YAML::NodeType::Null:
      return "no value";
    default:
      return "a scalar";
  }
}

absl::Status WalkYaml(const YAML::Node& map, const std::string& prefix, absl::string_view source,
                      ServerConfig* config) {
  for (const auto& entry : map) {
    const std::string name = entry.first.as<std::string>();
    const std::string path = prefix.empty() ? name : absl::StrCat(prefix, ".", name);
    const YAML::Node& value = entry.second;
    if (const ConfigKey* key = FindKey(path)) {
      if (!value.IsScalar()) {
        return absl::InvalidArgumentError(absl::StrFormat("%s: key '%s' expects a %s value, got %s",
                                                          source, path, ConfigKeyTypeName(*key),
                                                          YamlNodeKind(value)));
      }
      absl::Status status = SetConfigValue(*key, value.Scalar(), config);
      if (!status.ok()) {
        return absl::InvalidArgumentError(absl::StrCat(source, ": ", status.message()));
      }
    } else if (IsSection(path)) {
      if (!value.IsMap()) {
        return absl::InvalidArgumentError(
            absl::StrFormat("%s: '%s' is a section and expects a map of keys, got %s", source, path,
                            YamlNodeKind(value)));
      }
      absl::Status status = WalkYaml(value, path, source, config);
      if (!status.ok()) return status;
    } else {
      return absl::InvalidArgumentError(
          absl::StrFormat("%s: unknown key '%s'%s", source, path, Suggestion(path)));
    }
  }
  return absl::OkStatus();
}

absl::Status OutOfRange(const ConfigKey& key, absl::string_view text) {
  return absl::InvalidArgumentError(absl::StrFormat("key '%s' must be in [%.17g, %.17g], got '%s'",
                                                    key.name, key.min, key.max, text));
}

// "engine.kv_cache_bytes" for "--engine.kv-cache-bytes" etc.
std::string NormalizeFlagName(absl::string_view flag) {
  return absl::StrReplaceAll(flag, {{"-", "_"}});
}

const ConfigKey* FindKeyByFlag(absl::string_view flag) {
  const std::string normalized = NormalizeFlagName(flag);
  for (const ConfigKey& key : ServerConfigKeys()) {
    if (key.name == normalized) return &key;
    for (absl::string_view alias : key.aliases) {
      if (alias == normalized) return &key;
    }
  }
  return nullptr;
}

}  // namespace

const std::vector<ConfigKey>& ServerConfigKeys() {
  static const std::vector<ConfigKey>* keys = new std::vector<ConfigKey>(MakeKeys());
  return *keys;
}

absl::string_view ConfigKeyTypeName(const ConfigKey& key) {
  ServerConfig scratch;
  ConfigFieldPtr field = key.field(scratch);
  static constexpr absl::string_view kNames[] = {"bool", "int32", "int64", "double", "string"};
  return kNames[field.index()];
}

std::string FormatConfigValue(const ServerConfig& config, const ConfigKey& key) {
  ConfigFieldPtr field = key.field(const_cast<ServerConfig&>(config));
  return std::visit(
      [](auto* value) -> std::string {
        using T = std::remove_pointer_t<decltype(value)>;
        if constexpr (std::is_same_v<T, bool>) {
          return *value ? "true" : "false";
        } else if constexpr (std::is_same_v<T, std::string>) {
          return absl::StrCat("\"", absl::CEscape(*value), "\"");
        } else if constexpr (std::is_same_v<T, double>) {
          std::string text = absl::StrFormat("%.17g", *value);
          // Keep doubles recognizable as such in YAML ("30.0", not "30").
          if (text.find_first_of(".eEn") == std::string::npos) text += ".0";
          return text;
        } else {
          return absl::StrCat(*value);
        }
      },
      field);
}

absl::Status SetConfigValue(const ConfigKey& key, absl::string_view text, ServerConfig* config) {
  ConfigFieldPtr field = key.field(*config);
  const absl::string_view type = ConfigKeyTypeName(key);
  auto type_error = [&](absl::string_view expected) {
    return absl::InvalidArgumentError(
        absl::StrFormat("key '%s' expects %s (%s), got '%s'", key.name, expected, type, text));
  };
  if (auto* b = std::get_if<bool*>(&field)) {
    const std::string lower = absl::AsciiStrToLower(text);
    if (lower == "true" || lower == "yes" || lower == "on" || lower == "1") {
      **b = true;
    } else if (lower == "false" || lower == "no" || lower == "off" || lower == "0") {
      **b = false;
    } else {
      return type_error("a boolean: true or false");
    }
    return absl::OkStatus();
  }
  if (auto* s = std::get_if<std::string*>(&field)) {
    if (!key.allowed.empty() &&
        std::find(key.allowed.begin(), key.allowed.end(), text) == key.allowed.end()) {
      return absl::InvalidArgumentError(absl::StrFormat("key '%s' must be one of {%s}, got '%s'",
                                                        key.name, absl::StrJoin(key.allowed, ", "),
                                                        text));
    }
    **s = std::string(text);
    return absl::OkStatus();
  }
  if (auto* d = std::get_if<double*>(&field)) {
    double value = 0;
    if (!absl::SimpleAtod(text, &value) || !std::isfinite(value)) return type_error("a number");
    if (value < key.min || value > key.max) return OutOfRange(key, text);
    **d = value;
    return absl::OkStatus();
  }
  int64_t value = 0;
  if (!absl::SimpleAtoi(text, &value)) return type_error("an integer");
  if (static_cast<double>(value) < key.min || static_cast<double>(value) > key.max) {
    return OutOfRange(key, text);
  }
  if (auto* i32 = std::get_if<int32_t*>(&field)) {
    **i32 = static_cast<int32_t>(value);
  } else {
    **std::get_if<int64_t*>(&field) = value;
  }
  return absl::OkStatus();
}

absl::Status ApplyConfigYaml(absl::string_view yaml_text, absl::string_view source,
                             ServerConfig* config) {
  // yaml-cpp reports errors by exceptions; they stop here.
  try {
    YAML::Node root = YAML::Load(std::string(yaml_text));
    if (root.IsNull()) return absl::OkStatus();  // an empty file sets nothing
    if (!root.IsMap()) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "%s: the top level must be a map of sections, got %s", source, YamlNodeKind(root)));
    }
    return WalkYaml(root, "", source, config);
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrFormat("%s: invalid YAML at line %d column %d: %s",
                                                      source, e.mark.line + 1, e.mark.column + 1,
                                                      e.msg));
  }
}

absl::Status ApplyConfigFile(const std::string& path, ServerConfig* config) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open config file"));
  std::stringstream text;
  text << in.rdbuf();
  return ApplyConfigYaml(text.str(), path, config);
}

absl::Status ValidateServerConfig(const ServerConfig& config) {
  const LimitsSection& limits = config.limits;
  if (limits.default_max_new_tokens > limits.max_new_tokens) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "limits.default_max_new_tokens (%d) must not exceed limits.max_new_tokens (%d)",
        limits.default_max_new_tokens, limits.max_new_tokens));
  }
  const size_t colon = config.server.listen.rfind(':');
  if (colon == std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrFormat("server.listen must be host:port, got '%s'", config.server.listen));
  }
  // gRPC takes a port over 65535 modulo 65536 and would listen somewhere else.
  int port = -1;
  if (!absl::StartsWith(config.server.listen, "unix:") &&
      (!absl::SimpleAtoi(config.server.listen.substr(colon + 1), &port) || port < 0 ||
       port > 65535)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("server.listen must be host:port with a port in [0, 65535], got '%s'",
                        config.server.listen));
  }
  const TlsSection& tls = config.server.tls;
  if (tls.cert_file.empty() != tls.key_file.empty()) {
    return absl::InvalidArgumentError(
        "server.tls.cert_file and server.tls.key_file must be set together");
  }
  if (tls.cert_file.empty() && (!tls.client_ca_file.empty() || tls.require_client_cert)) {
    return absl::InvalidArgumentError(
        "server.tls.client_ca_file and server.tls.require_client_cert need server.tls.cert_file "
        "and server.tls.key_file");
  }
  if (tls.require_client_cert && tls.client_ca_file.empty()) {
    return absl::InvalidArgumentError(
        "server.tls.require_client_cert needs server.tls.client_ca_file");
  }
  if (config.model.dir.empty()) {
    return absl::InvalidArgumentError("model.dir must name the model directory");
  }
  return absl::OkStatus();
}

absl::StatusOr<ServerCommandLine> ParseServerCommandLine(const std::vector<std::string>& args) {
  ServerCommandLine result;
  std::vector<std::pair<const ConfigKey*, std::string>> overrides;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (arg == "-h") {
      result.help = true;
      continue;
    }
    if (arg.size() < 3 || arg.substr(0, 2) != "--") {
      return absl::InvalidArgumentError(
          absl::StrFormat("unexpected argument '%s' (flags are --key=value)", arg));
    }
    std::string name = arg.substr(2);
    std::optional<std::string> value;
    if (size_t eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name.resize(eq);
    }
    if (name == "help" || name == "h") {
      result.help = true;
      continue;
    }
    // Takes the flag's value: after '=', or the next argument.
    auto take_value = [&]() -> absl::StatusOr<std::string> {
      if (value) return *value;
      if (i + 1 >= args.size()) {
        return absl::InvalidArgumentError(absl::StrCat("flag --", name, " needs a value"));
      }
      return args[++i];
    };
    if (name == "config") {
      absl::StatusOr<std::string> path = take_value();
      if (!path.ok()) return path.status();
      result.config_file = *path;
      continue;
    }
    const ConfigKey* key = FindKeyByFlag(name);
    if (key == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrFormat("unknown flag --%s%s", name, Suggestion(NormalizeFlagName(name))));
    }
    // A bool flag alone means true, unless the next argument is its value.
    if (!value && ConfigKeyTypeName(*key) == "bool" &&
        (i + 1 >= args.size() || args[i + 1].substr(0, 2) == "--")) {
      value = "true";
    }
    absl::StatusOr<std::string> text = take_value();
    if (!text.ok()) return text.status();
    overrides.emplace_back(key, *text);
  }
  if (!result.config_file.empty()) {
    absl::Status status = ApplyConfigFile(result.config_file, &result.config);
    if (!status.ok()) return status;
  }
  for (const auto& [key, text] : overrides) {
    absl::Status status = SetConfigValue(*key, text, &result.config);
    if (!status.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("flag --", key->name, ": ", status.message()));
    }
  }
  absl::Status status = ValidateServerConfig(result.config);
  if (!status.ok()) return status;
  return result;
}

std::string ServerConfigUsage(absl::string_view program) {
  const ServerConfig defaults;
  std::string out = absl::StrFormat(
      "usage: %s [--config FILE] [--<key>=<value> ...]\n\n"
      "Serves an LLM over gRPC. Settings come from the defaults, then --config FILE (YAML), then\n"
      "flags. Every key of the YAML file is also a flag (--engine.kv_cache_bytes=...).\n\n",
      program);
  for (const ConfigKey& key : ServerConfigKeys()) {
    std::string names = absl::StrCat("--", key.name);
    for (absl::string_view alias : key.aliases) absl::StrAppend(&names, ", --", alias);
    absl::StrAppendFormat(&out, "  %s (%s, default %s)\n      %s\n", names, ConfigKeyTypeName(key),
                          FormatConfigValue(defaults, key), key.description);
  }
  return out;
}

}  // namespace spqr
