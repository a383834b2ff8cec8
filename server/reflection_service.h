// spqr-server's gRPC server reflection (grpc.reflection.v1alpha.ServerReflection), answered from
// the process's generated DescriptorPool. It replaces gRPC's reflection plugin (whose service
// cannot be wrapped, and whose calls a 1.51 server interceptor cannot refuse) so that it can
// require an API key (server.auth.exempt_reflection: false); tools such as grpcurl and grpc_cli
// see the same answers.
//
// The stream is registered raw and parses each request itself (call_parsing.h): a message that is
// not a ServerReflectionRequest ends the stream with INVALID_ARGUMENT naming the problem, counted
// in spqr_malformed_requests_total{method="ServerReflectionInfo"}, instead of gRPC's bare
// UNIMPLEMENTED.
#pragma once

#include <string>
#include <vector>

#include "grpc/reflection/v1alpha/reflection.grpc.pb.h"
#include "server/api_keys.h"
#include "server/metrics.h"

namespace spqr {

class ReflectionService final : public grpc::reflection::v1alpha::ServerReflection::
                                    WithRawCallbackMethod_ServerReflectionInfo<
                                        grpc::reflection::v1alpha::ServerReflection::Service> {
 public:
  using Request = grpc::reflection::v1alpha::ServerReflectionRequest;
  using Response = grpc::reflection::v1alpha::ServerReflectionResponse;

  // `services`: the full names list_services answers with. `required_keys`: null (or disabled
  // keys) lets every caller in; else the stream needs one of the keys, refusals are counted
  // through `metrics` (label "ServerReflectionInfo"), as are malformed requests. Both must outlive
  // this service.
  ReflectionService(std::vector<std::string> services, const ApiKeys* required_keys,
                    ServerMetrics* metrics);

  // Reads Request messages and writes Response messages, in wire format.
  grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* ServerReflectionInfo(
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
