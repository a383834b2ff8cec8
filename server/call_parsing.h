// The request parsing shared by every gRPC service of spqr-server: each registers its methods raw
// (grpc::ByteBuffer) and parses here, so that a request that is not a valid message ends with
// INVALID_ARGUMENT naming the problem (request_parsing.h) and is counted, instead of gRPC's bare
// UNIMPLEMENTED that no service sees.
#pragma once

#include "absl/strings/string_view.h"
#include "google/protobuf/message.h"
#include "grpcpp/support/byte_buffer.h"
#include "grpcpp/support/status.h"
#include "server/metrics.h"

namespace spqr {

// Parses `payload` into `message`. On failure: INVALID_ARGUMENT naming the problem, counted in
// spqr_malformed_requests_total{method} through `metrics` (null: not counted). `method` is the
// metric label ("Generate", "Health.Check", "ServerReflectionInfo", ...).
grpc::Status ParseCallRequest(const grpc::ByteBuffer& payload, absl::string_view method,
                              ServerMetrics* metrics, google::protobuf::Message* message);

}  // namespace spqr
