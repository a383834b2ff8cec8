// spqr-server's gRPC server reflection (grpc.reflection.v1alpha.ServerReflection), answered from
// the process's generated DescriptorPool. It replaces gRPC's reflection plugin (whose service
// cannot be wrapped, and whose calls a 1.51 server interceptor cannot refuse) so that it can
// require an API key (server.auth.exempt_reflection: false); tools such as grpcurl and grpc_cli
// see the same answers.
#pragma once

#include <string>
#include <vector>

#include "grpc/reflection/v1alpha/reflection.grpc.pb.h"
#include "server/api_keys.h"
#include "server/metrics.h"

namespace spqr {

class ReflectionService final
    : public grpc::reflection::v1alpha::ServerReflection::CallbackService {
 public:
  using Request = grpc::reflection::v1alpha::ServerReflectionRequest;
  using Response = grpc::reflection::v1alpha::ServerReflectionResponse;

  // `services`: the full names list_services answers with. `required_keys`: null (or disabled
  // keys) lets every caller in; else the stream needs one of the keys, refusals are counted
  // through `metrics` (label "ServerReflectionInfo"). Both must outlive this service.
  ReflectionService(std::vector<std::string> services, const ApiKeys* required_keys,
                    ServerMetrics* metrics);

  grpc::ServerBidiReactor<Request, Response>* ServerReflectionInfo(
      grpc::CallbackServerContext* context) override;

  // The answer to one request: list_services, file_by_filename and file_containing_symbol
  // (the file with its transitive dependencies), file_containing_extension,
  // all_extension_numbers_of_type; an error_response (NOT_FOUND, UNIMPLEMENTED) otherwise.
  Response Answer(const Request& request) const;

 private:
  class StreamReactor;

  const std::vector<std::string> services_;
  const ApiKeys* const required_keys_;
  ServerMetrics* const metrics_;
};

}  // namespace spqr
