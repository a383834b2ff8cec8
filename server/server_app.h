// The spqr-server process: gRPC + health + reflection, metrics endpoint, model loading and
// warm-up, signal handling and graceful drain.
#pragma once

#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "config/server_config.h"
#include "engine/runtime/engine.h"
#include "engine/runtime/model.h"
#include "grpcpp/security/server_credentials.h"

namespace spqr {

// The engine options of a config.
EngineOptions ToEngineOptions(const ServerConfig& config);
ModelLoadOptions ToModelLoadOptions(const ServerConfig& config);

// The gRPC port's credentials: plaintext without server.tls.cert_file, else TLS with that
// certificate, verifying client certificates against client_ca_file when set (mTLS; required
// with require_client_cert). Errors name the unreadable or non-PEM file and its key.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const TlsSection& tls);

// Runs the server until SIGTERM or SIGINT, then drains and returns OK (exit code 0). Startup
// failures (port in use, model not loadable, warm-up failed, TLS or API key files unreadable)
// return an error naming the cause.
//
// Start-up order: bind the gRPC port with health NOT_SERVING and print "listening on HOST:PORT",
// start the metrics endpoint and print "metrics on HOST:PORT", load the model, create the engine,
// run a warm-up request through it, then health SERVING ("ready"). Shutdown: health NOT_SERVING,
// new calls UNAVAILABLE, in-flight calls finish for up to server.drain_timeout_seconds, the rest
// are cancelled, then the gRPC server and the engine stop.
absl::Status RunServer(const ServerConfig& config);

}  // namespace spqr
