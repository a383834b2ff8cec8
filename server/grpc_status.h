// gRPC status helpers shared by the services: code names (the metric and log labels) and the
// conversion from the engine's absl::Status.
#pragma once

#include "absl/status/status.h"
#include "grpcpp/support/status.h"

namespace spqr {

// "OK", "INVALID_ARGUMENT", ... for a gRPC status code.
const char* GrpcCodeName(grpc::StatusCode code);

// absl::Status -> grpc::Status; the codes are the same numbers.
grpc::Status ToGrpcStatus(const absl::Status& status);

}  // namespace spqr
