// spqr-server: serves a LLaMA-family (dense or SpQR) model over gRPC. See server/server_app.h and
// config/spqr-server.yaml.
#include <cstdio>
#include <string>
#include <vector>

#include "config/server_config.h"
#include "server/server_app.h"

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  absl::StatusOr<spqr::ServerCommandLine> command_line = spqr::ParseServerCommandLine(args);
  if (!command_line.ok()) {
    std::fprintf(stderr, "spqr-server: %s\n(see spqr-server --help)\n",
                 std::string(command_line.status().message()).c_str());
    return 2;
  }
  if (command_line->help) {
    std::printf("%s", spqr::ServerConfigUsage("spqr-server").c_str());
    return 0;
  }
  absl::Status status = spqr::RunServer(command_line->config);
  if (!status.ok()) {
    std::fprintf(stderr, "spqr-server: %s\n", std::string(status.message()).c_str());
    return 1;
  }
  return 0;
}
