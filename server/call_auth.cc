#include "server/call_auth.h"

namespace spqr {

grpc::Status AuthenticateCall(const ApiKeys& keys, const grpc::ServerContextBase& context,
                              absl::string_view method, ServerMetrics* metrics) {
  if (!keys.enabled()) return grpc::Status::OK;
  const auto& metadata = context.client_metadata();
  auto it = metadata.find("authorization");
  if (it == metadata.end()) {
    metrics->RecordUnauthenticated(method, "missing");
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                        "this server needs an API key: send the metadata "
                        "\"authorization: Bearer <key>\"");
  }
  if (!keys.Accepts(absl::string_view(it->second.data(), it->second.size()))) {
    metrics->RecordUnauthenticated(method, "invalid");
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                        "the API key in the authorization metadata is not valid");
  }
  return grpc::Status::OK;
}

}  // namespace spqr
