// SpqrServiceImpl::Abort (the RPC): cancels the live requests of the caller with a given id.
#include <string>

#include "server/grpc_status.h"
#include "server/log.h"
#include "server/request_parsing.h"
#include "server/spqr_service.h"

namespace spqr {

grpc::ServerUnaryReactor* SpqrServiceImpl::Abort(grpc::CallbackServerContext* context,
                                                 const grpc::ByteBuffer* raw_request,
                                                 grpc::ByteBuffer* raw_response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  v1::AbortRequest request;
  grpc::Status status = ParseAndAdmit(context, "Abort", *raw_request, &request);
  if (status.ok() && request.request_id().empty()) {
    status = grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "request_id: must not be empty");
  }
  if (status.ok()) {
    v1::AbortResponse response;
    response.set_found(Abort(request.request_id(), CallerKey(context)));
    Logf(LogLevel::kInfo, "Abort %s %s", LogSafe(request.request_id()),
         response.found() ? "cancelled the live request" : "found no live request");
    *raw_response = SerializeResponse(response);
  } else {
    Logf(LogLevel::kInfo, "Abort %s: %s", GrpcCodeName(status.error_code()),
         LogSafe(status.error_message(), kLogMessageBytes));
  }
  metrics_->RecordRpc("Abort", GrpcCodeName(status.error_code()));
  reactor->Finish(status);
  return reactor;
}

}  // namespace spqr
