#include "server/call_parsing.h"

#include <string>

#include "server/request_parsing.h"

namespace spqr {

grpc::Status ParseCallRequest(const grpc::ByteBuffer& payload, absl::string_view method,
                              ServerMetrics* metrics, google::protobuf::Message* message) {
  const absl::Status parsed = ParseRequest(payload, message);
  if (parsed.ok()) return grpc::Status::OK;
  if (metrics != nullptr) metrics->RecordMalformed(method);
  return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, std::string(parsed.message()));
}

}  // namespace spqr
