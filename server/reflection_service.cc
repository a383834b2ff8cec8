#include "server/reflection_service.h"

#include <cstdint>
#include <unordered_set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/descriptor.pb.h"
#include "server/call_auth.h"
#include "server/call_parsing.h"
#include "server/log.h"
#include "server/request_parsing.h"

namespace spqr {
namespace {

namespace protobuf = google::protobuf;

// Adds `file` and the files it depends on (each once) to the response, as gRPC's reflection does:
// a client needs the whole closure to build the descriptors.
void AddFileWithDependencies(const protobuf::FileDescriptor* file,
                             std::unordered_set<std::string>* added,
                             ReflectionService::Response* response) {
  if (!added->insert(file->name()).second) return;
  protobuf::FileDescriptorProto proto;
  file->CopyTo(&proto);
  response->mutable_file_descriptor_response()->add_file_descriptor_proto(
      proto.SerializeAsString());
  for (int i = 0; i < file->dependency_count(); ++i) {
    AddFileWithDependencies(file->dependency(i), added, response);
  }
}

void SetError(grpc::StatusCode code, const std::string& message,
              ReflectionService::Response* response) {
  response->mutable_error_response()->set_error_code(static_cast<int>(code));
  response->mutable_error_response()->set_error_message(message);
}

}  // namespace

// One reflection stream: read a request, write its answer, repeat until the client half-closes
// (or the call is cancelled, which fails the pending read or write). A request that does not
// parse ends the stream: the protocol has no per-message way to say "unreadable".
class ReflectionService::StreamReactor final
    : public grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  StreamReactor(const ReflectionService* owner, grpc::Status refusal) : owner_(owner) {
    if (!refusal.ok()) {
      Finish(refusal);
      return;
    }
    StartRead(&read_buffer_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {  // half-close or cancellation
      Finish(grpc::Status::OK);
      return;
    }
    Request request;
    grpc::Status parsed =
        ParseCallRequest(read_buffer_, "ServerReflectionInfo", owner_->metrics_, &request);
    if (!parsed.ok()) {
      const grpc::Status status(
          grpc::StatusCode::INVALID_ARGUMENT,
          absl::StrCat("message ", messages_read_ + 1, " of the stream: ", parsed.error_message()));
      Logf(LogLevel::kInfo, "ServerReflectionInfo INVALID_ARGUMENT: %s",
           LogSafe(status.error_message(), kLogMessageBytes));
      Finish(status);
      return;
    }
    ++messages_read_;
    write_buffer_ = SerializeResponse(owner_->Answer(request));
    StartWrite(&write_buffer_);
  }

  void OnWriteDone(bool ok) override {
    if (!ok) {
      Finish(grpc::Status(grpc::StatusCode::CANCELLED, "the reflection stream broke"));
      return;
    }
    StartRead(&read_buffer_);
  }

  void OnDone() override { delete this; }

 private:
  const ReflectionService* const owner_;
  grpc::ByteBuffer read_buffer_;
  grpc::ByteBuffer write_buffer_;
  int64_t messages_read_ = 0;
};

ReflectionService::ReflectionService(std::vector<std::string> services,
                                     const ApiKeys* required_keys, ServerMetrics* metrics)
    : services_(std::move(services)), required_keys_(required_keys), metrics_(metrics) {}

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>*
ReflectionService::ServerReflectionInfo(grpc::CallbackServerContext* context) {
  grpc::Status refusal;
  if (required_keys_ != nullptr) {
    refusal = AuthenticateCall(*required_keys_, *context, "ServerReflectionInfo", metrics_);
  }
  return new StreamReactor(this, std::move(refusal));
}

ReflectionService::Response ReflectionService::Answer(const Request& request) const {
  const protobuf::DescriptorPool* pool = protobuf::DescriptorPool::generated_pool();
  Response response;
  response.set_valid_host(request.host());
  *response.mutable_original_request() = request;
  std::unordered_set<std::string> added;
  switch (request.message_request_case()) {
    case Request::kListServices:
      for (const std::string& name : services_) {
        response.mutable_list_services_response()->add_service()->set_name(name);
      }
      break;
    case Request::kFileByFilename:
      if (const protobuf::FileDescriptor* file = pool->FindFileByName(request.file_by_filename())) {
        AddFileWithDependencies(file, &added, &response);
      } else {
        SetError(grpc::StatusCode::NOT_FOUND, "File not found.", &response);
      }
      break;
    case Request::kFileContainingSymbol:
      if (const protobuf::FileDescriptor* file =
              pool->FindFileContainingSymbol(request.file_containing_symbol())) {
        AddFileWithDependencies(file, &added, &response);
      } else {
        SetError(grpc::StatusCode::NOT_FOUND, "Symbol not found.", &response);
      }
      break;
    case Request::kFileContainingExtension: {
      const auto& wanted = request.file_containing_extension();
      const protobuf::Descriptor* type = pool->FindMessageTypeByName(wanted.containing_type());
      const protobuf::FieldDescriptor* extension =
          type == nullptr ? nullptr : pool->FindExtensionByNumber(type, wanted.extension_number());
      if (extension != nullptr) {
        AddFileWithDependencies(extension->file(), &added, &response);
      } else {
        SetError(grpc::StatusCode::NOT_FOUND, "Extension not found.", &response);
      }
      break;
    }
    case Request::kAllExtensionNumbersOfType: {
      const protobuf::Descriptor* type =
          pool->FindMessageTypeByName(request.all_extension_numbers_of_type());
      if (type == nullptr) {
        SetError(grpc::StatusCode::NOT_FOUND, "Type not found.", &response);
        break;
      }
      std::vector<const protobuf::FieldDescriptor*> extensions;
      pool->FindAllExtensions(type, &extensions);
      auto* numbers = response.mutable_all_extension_numbers_response();
      numbers->set_base_type_name(type->full_name());
      for (const protobuf::FieldDescriptor* extension : extensions) {
        numbers->add_extension_number(extension->number());
      }
      break;
    }
    case Request::MESSAGE_REQUEST_NOT_SET:
      // An empty oneof: nothing was asked (gRPC's own reflection answers the same).
      SetError(grpc::StatusCode::UNIMPLEMENTED,
               "the ServerReflectionRequest sets none of the message_request fields", &response);
      break;
  }
  return response;
}

}  // namespace spqr
