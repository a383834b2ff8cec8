// The API key check shared by every gRPC service of spqr-server (spqr.v1.SpqrService always,
// grpc.health.v1.Health and reflection unless server.auth.exempt_* lets them answer without a key).
#pragma once

#include "absl/strings/string_view.h"
#include "grpcpp/server_context.h"
#include "server/api_keys.h"
#include "server/metrics.h"

namespace spqr {

// OK when `keys` is disabled (no keys configured) or the call's "authorization" metadata holds
// one of them. Otherwise UNAUTHENTICATED, counted in
// spqr_unauthenticated_requests_total{method, reason="missing"|"invalid"} through `metrics`.
// `method` is the metric label ("Generate", "Health.Check", ...).
grpc::Status AuthenticateCall(const ApiKeys& keys, const grpc::ServerContextBase& context,
                              absl::string_view method, ServerMetrics* metrics);

}  // namespace spqr
