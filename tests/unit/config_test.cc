// Tests of config/server_config: the key table, the reference YAML file, YAML and flag loading.
#include <fstream>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "config/server_config.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "yaml-cpp/yaml.h"

namespace spqr {
namespace {

using ::testing::HasSubstr;

const std::string kReferenceFile = std::string(SPQR_SOURCE_DIR) + "/config/spqr-server.yaml";

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

void CollectLeafPaths(const YAML::Node& node, const std::string& prefix,
                      std::set<std::string>* out) {
  for (const auto& entry : node) {
    std::string path = prefix.empty() ? entry.first.as<std::string>()
                                      : prefix + "." + entry.first.as<std::string>();
    if (entry.second.IsMap()) {
      CollectLeafPaths(entry.second, path, out);
    } else {
      out->insert(path);
    }
  }
}

TEST(ConfigTableTest, KeyNamesAreUniqueAndDescribed) {
  std::set<std::string> names;
  for (const ConfigKey& key : ServerConfigKeys()) {
    EXPECT_TRUE(names.insert(std::string(key.name)).second) << "duplicate key " << key.name;
    EXPECT_FALSE(key.description.empty()) << key.name;
    EXPECT_NE(key.name.find('.'), absl::string_view::npos) << key.name << " is not in a section";
  }
}

TEST(ConfigTableTest, DefaultsAreWithinTheirOwnRanges) {
  const ServerConfig defaults;
  for (const ConfigKey& key : ServerConfigKeys()) {
    ServerConfig scratch;
    std::string text = FormatConfigValue(defaults, key);
    if (ConfigKeyTypeName(key) == "string") text = text.substr(1, text.size() - 2);  // unquote
    EXPECT_TRUE(SetConfigValue(key, text, &scratch).ok()) << key.name << " = " << text;
  }
  EXPECT_TRUE(ValidateServerConfig(defaults).ok());
}

TEST(ReferenceFileTest, ListsExactlyTheKeysOfTheTable) {
  YAML::Node root = YAML::LoadFile(kReferenceFile);
  std::set<std::string> in_file;
  CollectLeafPaths(root, "", &in_file);
  std::set<std::string> in_table;
  for (const ConfigKey& key : ServerConfigKeys()) in_table.insert(std::string(key.name));
  EXPECT_EQ(in_file, in_table);
}

TEST(ReferenceFileTest, ValuesAreTheDefaults) {
  ServerConfig loaded;
  // Start from non-default values so that a key the loader silently skipped would show.
  loaded.engine.kv_block_size = 7;
  loaded.server.listen = "changed:1";
  ASSERT_TRUE(ApplyConfigFile(kReferenceFile, &loaded).ok());
  const ServerConfig defaults;
  for (const ConfigKey& key : ServerConfigKeys()) {
    EXPECT_EQ(FormatConfigValue(loaded, key), FormatConfigValue(defaults, key)) << key.name;
  }
}

TEST(ReferenceFileTest, EveryKeyHasACommentAbove) {
  std::istringstream lines(ReadFile(kReferenceFile));
  std::string line, previous;
  int keys = 0;
  while (std::getline(lines, line)) {
    // A key line: indented "name: value" (an indented "name:" alone opens a nested section).
    static const std::regex key_line("^ +[a-z_]+: *[^ #].*$");
    if (std::regex_match(line, key_line)) {
      ++keys;
      EXPECT_NE(previous.find('#'), std::string::npos) << "no comment above: " << line;
    }
    previous = line;
  }
  EXPECT_EQ(keys, static_cast<int>(ServerConfigKeys().size()));
}

TEST(ConfigYamlTest, OverridesOnlyTheKeysPresent) {
  ServerConfig config;
  ASSERT_TRUE(
      ApplyConfigYaml("engine:\n  kv_block_size: 32\nmodel:\n  dir: /m\n", "t.yaml", &config).ok());
  EXPECT_EQ(config.engine.kv_block_size, 32);
  EXPECT_EQ(config.model.dir, "/m");
  EXPECT_EQ(config.engine.max_running_requests, ServerConfig().engine.max_running_requests);
}

TEST(ConfigYamlTest, UnknownKeyIsNamedWithItsPathAndASuggestion) {
  ServerConfig config;
  absl::Status status = ApplyConfigYaml("engine:\n  kv_cache_byte: 5\n", "t.yaml", &config);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("t.yaml"));
  EXPECT_THAT(status.message(), HasSubstr("unknown key 'engine.kv_cache_byte'"));
  EXPECT_THAT(status.message(), HasSubstr("did you mean 'engine.kv_cache_bytes'"));
}

TEST(ConfigYamlTest, UnknownSectionIsRejected) {
  ServerConfig config;
  absl::Status status = ApplyConfigYaml("turbo:\n  on: true\n", "t.yaml", &config);
  EXPECT_THAT(status.message(), HasSubstr("unknown key 'turbo'"));
}

TEST(ConfigYamlTest, WrongTypeNamesKeyAndExpectedType) {
  ServerConfig config;
  absl::Status status = ApplyConfigYaml("engine:\n  kv_block_size: sixteen\n", "t.yaml", &config);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("'engine.kv_block_size'"));
  EXPECT_THAT(status.message(), HasSubstr("an integer (int32)"));
  EXPECT_THAT(status.message(), HasSubstr("sixteen"));

  status = ApplyConfigYaml("engine:\n  prefix_caching: maybe\n", "t.yaml", &config);
  EXPECT_THAT(status.message(), HasSubstr("'engine.prefix_caching' expects a boolean"));

  status = ApplyConfigYaml("model:\n  dir: [a, b]\n", "t.yaml", &config);
  EXPECT_THAT(status.message(), HasSubstr("'model.dir' expects a string value, got a list"));

  status = ApplyConfigYaml("engine: 5\n", "t.yaml", &config);
  EXPECT_THAT(status.message(), HasSubstr("'engine' is a section"));
}

TEST(ConfigYamlTest, OutOfRangeAndDisallowedValuesAreRejected) {
  ServerConfig config;
  absl::Status status = ApplyConfigYaml("engine:\n  kv_block_size: 0\n", "t.yaml", &config);
  EXPECT_THAT(status.message(), HasSubstr("'engine.kv_block_size' must be in [1, 1024]"));
  status = ApplyConfigYaml("model:\n  backend: tpu\n", "t.yaml", &config);
  EXPECT_THAT(status.message(), HasSubstr("'model.backend' must be one of {auto, cpu, cuda}"));
  status = ApplyConfigYaml("engine:\n  max_running_requests: 99999999999\n", "t.yaml", &config);
  EXPECT_THAT(status.message(), HasSubstr("engine.max_running_requests"));
}

TEST(ConfigYamlTest, MalformedYamlReportsTheLine) {
  ServerConfig config;
  absl::Status status = ApplyConfigYaml("engine:\n  kv_block_size: [1,\n", "bad.yaml", &config);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("bad.yaml: invalid YAML at line"));
}

TEST(ConfigYamlTest, MissingFileIsNotFound) {
  ServerConfig config;
  absl::Status status = ApplyConfigFile("/nonexistent/spqr.yaml", &config);
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(status.message(), HasSubstr("/nonexistent/spqr.yaml"));
}

TEST(CommandLineTest, FlagsOverrideTheFileWhateverTheOrder) {
  const std::string path = ::testing::TempDir() + "/override.yaml";
  std::ofstream(path) << "model:\n  dir: /from/file\n  threads: 3\n";
  absl::StatusOr<ServerCommandLine> parsed =
      ParseServerCommandLine({"--model=/from/flag", "--config", path, "--metrics_port", "0",
                              "--engine.kv-block-size=8", "--engine.prefix_caching=false"});
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->config_file, path);
  EXPECT_EQ(parsed->config.model.dir, "/from/flag");
  EXPECT_EQ(parsed->config.model.threads, 3);
  EXPECT_EQ(parsed->config.metrics.port, 0);
  EXPECT_EQ(parsed->config.engine.kv_block_size, 8);
  EXPECT_FALSE(parsed->config.engine.prefix_caching);
}

TEST(CommandLineTest, BoolFlagAloneMeansTrue) {
  absl::StatusOr<ServerCommandLine> parsed = ParseServerCommandLine(
      {"--engine.prefix_caching=false", "--metrics.enabled", "--listen=127.0.0.1:0"});
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_TRUE(parsed->config.metrics.enabled);
  EXPECT_EQ(parsed->config.server.listen, "127.0.0.1:0");
}

TEST(CommandLineTest, ErrorsNameTheFlag) {
  absl::StatusOr<ServerCommandLine> parsed = ParseServerCommandLine({"--modle=/x"});
  EXPECT_THAT(parsed.status().message(), HasSubstr("unknown flag --modle"));
  parsed = ParseServerCommandLine({"--threads=many"});
  EXPECT_THAT(parsed.status().message(), HasSubstr("model.threads"));
  parsed = ParseServerCommandLine({"positional"});
  EXPECT_THAT(parsed.status().message(), HasSubstr("unexpected argument 'positional'"));
  parsed = ParseServerCommandLine({"--config"});
  EXPECT_THAT(parsed.status().message(), HasSubstr("--config needs a value"));
}

TEST(CommandLineTest, CrossKeyValidation) {
  absl::StatusOr<ServerCommandLine> parsed =
      ParseServerCommandLine({"--limits.max_new_tokens=10", "--limits.default_max_new_tokens=20"});
  EXPECT_THAT(parsed.status().message(), HasSubstr("limits.default_max_new_tokens"));
}

// gRPC would take a port over 65535 modulo 65536 and listen somewhere else.
TEST(CommandLineTest, ListenPortMustBeANumberInRange) {
  for (const char* bad : {"127.0.0.1:70000", "127.0.0.1:-1", "127.0.0.1:http", "127.0.0.1:"}) {
    absl::StatusOr<ServerCommandLine> parsed =
        ParseServerCommandLine({std::string("--listen=") + bad});
    EXPECT_THAT(parsed.status().message(), HasSubstr("port in [0, 65535]")) << bad;
  }
  for (const char* good : {"127.0.0.1:0", "[::1]:65535", "0.0.0.0:50051", "unix:/tmp/spqr"}) {
    EXPECT_TRUE(ParseServerCommandLine({std::string("--listen=") + good}).ok()) << good;
  }
}

TEST(CommandLineTest, TlsKeysMustBeConsistent) {
  auto parse = [](std::vector<std::string> flags) {
    flags.push_back("--model=/m");
    return ParseServerCommandLine(flags).status();
  };
  EXPECT_TRUE(parse({"--server.tls.cert_file=c.pem", "--server.tls.key_file=k.pem"}).ok());
  EXPECT_TRUE(parse({"--server.tls.cert_file=c.pem", "--server.tls.key_file=k.pem",
                     "--server.tls.client_ca_file=ca.pem", "--server.tls.require_client_cert"})
                  .ok());
  absl::Status half = parse({"--server.tls.cert_file=c.pem"});
  EXPECT_EQ(half.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(half.message().find("server.tls.key_file"), std::string::npos) << half;
  absl::Status no_ca = parse({"--server.tls.cert_file=c.pem", "--server.tls.key_file=k.pem",
                              "--server.tls.require_client_cert"});
  EXPECT_NE(no_ca.message().find("server.tls.client_ca_file"), std::string::npos) << no_ca;
  absl::Status no_tls = parse({"--server.tls.client_ca_file=ca.pem"});
  EXPECT_NE(no_tls.message().find("server.tls.cert_file"), std::string::npos) << no_tls;
}

TEST(ConfigYamlTest, NestedSectionsLoad) {
  ServerConfig config;
  ASSERT_TRUE(ApplyConfigYaml("server:\n  max_concurrent_streams: 8\n  tls:\n    cert_file: c\n"
                              "  auth:\n    api_keys_env: KEYS\n",
                              "t.yaml", &config)
                  .ok());
  EXPECT_EQ(config.server.max_concurrent_streams, 8);
  EXPECT_EQ(config.server.tls.cert_file, "c");
  EXPECT_EQ(config.server.auth.api_keys_env, "KEYS");
}

TEST(ConfigYamlTest, AuthExemptionsDefaultOnAndLoadFromYamlAndFlags) {
  ServerConfig config;
  EXPECT_TRUE(config.server.auth.exempt_health);
  EXPECT_TRUE(config.server.auth.exempt_reflection);
  ASSERT_TRUE(
      ApplyConfigYaml("server:\n  auth:\n    exempt_health: false\n", "t.yaml", &config).ok());
  EXPECT_FALSE(config.server.auth.exempt_health);
  EXPECT_TRUE(config.server.auth.exempt_reflection);
  absl::Status wrong_type =
      ApplyConfigYaml("server:\n  auth:\n    exempt_reflection: maybe\n", "t.yaml", &config);
  EXPECT_EQ(wrong_type.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(wrong_type.message(), HasSubstr("server.auth.exempt_reflection"));
  absl::Status unknown =
      ApplyConfigYaml("server:\n  auth:\n    exempt_metrics: false\n", "t.yaml", &config);
  EXPECT_EQ(unknown.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(unknown.message(), HasSubstr("server.auth.exempt_metrics"));

  // Flags override the file.
  const std::string path = ::testing::TempDir() + "/auth_exempt.yaml";
  {
    std::ofstream out(path);
    out << "server:\n  auth:\n    exempt_health: false\n    exempt_reflection: false\n";
  }
  absl::StatusOr<ServerCommandLine> parsed =
      ParseServerCommandLine({"--server.auth.exempt_health=true", "--config", path, "--model=/m"});
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_TRUE(parsed->config.server.auth.exempt_health);
  EXPECT_FALSE(parsed->config.server.auth.exempt_reflection);
  parsed = ParseServerCommandLine({"--server.auth.exempt-reflection=false", "--model=/m"});
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_FALSE(parsed->config.server.auth.exempt_reflection);
}

TEST(CommandLineTest, HelpListsEveryKey) {
  absl::StatusOr<ServerCommandLine> parsed = ParseServerCommandLine({"--help"});
  ASSERT_TRUE(parsed.ok());
  EXPECT_TRUE(parsed->help);
  const std::string usage = ServerConfigUsage("spqr-server");
  for (const ConfigKey& key : ServerConfigKeys()) {
    EXPECT_THAT(usage, HasSubstr("--" + std::string(key.name))) << key.name;
  }
}

}  // namespace
}  // namespace spqr
