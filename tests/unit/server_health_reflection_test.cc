// Unit tests of spqr-server's own health (grpc.health.v1) and reflection services, served
// in-process on a loopback port: statuses, Watch streams and their end at shutdown, API keys, and
// the reflection answers tools rely on.
#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "google/protobuf/descriptor.pb.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server.h"
#include "grpcpp/server_builder.h"
#include "gtest/gtest.h"
#include "prometheus/text_serializer.h"
#include "server/api_keys.h"
#include "server/health_service.h"
#include "server/metrics.h"
#include "server/reflection_service.h"
#include "spqr/v1/spqr.pb.h"

namespace spqr {
namespace {

using grpc::health::v1::Health;
using grpc::health::v1::HealthCheckRequest;
using grpc::health::v1::HealthCheckResponse;
using grpc::reflection::v1alpha::ServerReflection;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::UnorderedElementsAre;

constexpr char kApi[] = "spqr.v1.SpqrService";

// The two services on 127.0.0.1:<free port>; `keys` (when enabled) protect both.
class ServedServices {
 public:
  explicit ServedServices(ApiKeys keys = ApiKeys())
      : keys_(std::move(keys)),
        metrics_(/*vllm_compatible_names=*/false),
        health_({kApi}, keys_.enabled() ? &keys_ : nullptr, &metrics_),
        reflection_({kApi, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"},
                    keys_.enabled() ? &keys_ : nullptr, &metrics_) {
    grpc::EnableDefaultHealthCheckService(false);
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(&health_);
    builder.RegisterService(&reflection_);
    server_ = builder.BuildAndStart();
    channel_ = grpc::CreateChannel("127.0.0.1:" + std::to_string(port),
                                   grpc::InsecureChannelCredentials());
  }
  ~ServedServices() {
    health_.Shutdown();
    server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  }

  HealthService& health() { return health_; }
  const ReflectionService& reflection() const { return reflection_; }
  grpc::Server& server() { return *server_; }
  std::unique_ptr<Health::Stub> health_stub() { return Health::NewStub(channel_); }
  std::unique_ptr<ServerReflection::Stub> reflection_stub() {
    return ServerReflection::NewStub(channel_);
  }
  std::string metrics_text() {
    return prometheus::TextSerializer().Serialize(metrics_.registry()->Collect());
  }

 private:
  const ApiKeys keys_;
  ServerMetrics metrics_;
  HealthService health_;
  ReflectionService reflection_;
  std::unique_ptr<grpc::Server> server_;
  std::shared_ptr<grpc::Channel> channel_;
};

void SetDeadline(grpc::ClientContext* context, int seconds = 10) {
  context->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(seconds));
}

grpc::Status Check(Health::Stub& stub, const std::string& service, HealthCheckResponse* response,
                   const char* key = nullptr) {
  grpc::ClientContext context;
  SetDeadline(&context);
  if (key != nullptr) context.AddMetadata("authorization", std::string("Bearer ") + key);
  HealthCheckRequest request;
  request.set_service(service);
  return stub.Check(&context, request, response);
}

TEST(HealthServiceTest, StartsNotServingAndFollowsSetServing) {
  ServedServices served;
  std::unique_ptr<Health::Stub> stub = served.health_stub();
  HealthCheckResponse response;
  for (const char* service : {"", kApi}) {
    ASSERT_TRUE(Check(*stub, service, &response).ok());
    EXPECT_EQ(response.status(), HealthCheckResponse::NOT_SERVING) << service;
  }
  served.health().SetServing(true);
  for (const char* service : {"", kApi}) {
    ASSERT_TRUE(Check(*stub, service, &response).ok());
    EXPECT_EQ(response.status(), HealthCheckResponse::SERVING) << service;
  }
  served.health().SetServing(false);
  ASSERT_TRUE(Check(*stub, "", &response).ok());
  EXPECT_EQ(response.status(), HealthCheckResponse::NOT_SERVING);
  EXPECT_EQ(Check(*stub, "no.such.Service", &response).error_code(), grpc::StatusCode::NOT_FOUND);
}

TEST(HealthServiceTest, WatchStreamsChangesAndEndsAtShutdownWithoutHoldingTheServer) {
  ServedServices served;
  std::unique_ptr<Health::Stub> stub = served.health_stub();
  grpc::ClientContext context;
  SetDeadline(&context, 30);
  HealthCheckRequest request;
  request.set_service(kApi);
  std::unique_ptr<grpc::ClientReader<HealthCheckResponse>> watch = stub->Watch(&context, request);
  HealthCheckResponse update;
  ASSERT_TRUE(watch->Read(&update));
  EXPECT_EQ(update.status(), HealthCheckResponse::NOT_SERVING);
  served.health().SetServing(true);
  ASSERT_TRUE(watch->Read(&update));
  EXPECT_EQ(update.status(), HealthCheckResponse::SERVING);
  served.health().SetServing(true);  // no change: nothing is sent
  served.health().SetServing(false);
  ASSERT_TRUE(watch->Read(&update));
  EXPECT_EQ(update.status(), HealthCheckResponse::NOT_SERVING);
  served.health().SetServing(true);
  ASSERT_TRUE(watch->Read(&update));
  EXPECT_EQ(update.status(), HealthCheckResponse::SERVING);
  EXPECT_EQ(served.health().watchers(), 1);

  served.health().Shutdown();
  ASSERT_TRUE(watch->Read(&update));
  EXPECT_EQ(update.status(), HealthCheckResponse::NOT_SERVING);
  EXPECT_FALSE(watch->Read(&update));
  grpc::Status end = watch->Finish();
  EXPECT_EQ(end.error_code(), grpc::StatusCode::UNAVAILABLE) << end.error_message();
  // Shutdown without a deadline waits for every call: it returns at once because no Watch is
  // left open.
  const auto start = std::chrono::steady_clock::now();
  served.server().Shutdown();
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(2));
  EXPECT_EQ(served.health().watchers(), 0);
}

TEST(HealthServiceTest, ManyWatchersUnderRapidChangesEachEndOnNotServing) {
  ServedServices served;
  std::unique_ptr<Health::Stub> stub = served.health_stub();
  constexpr int kWatchers = 12;
  std::vector<std::vector<HealthCheckResponse::ServingStatus>> seen(kWatchers);
  std::vector<grpc::Status> ends(kWatchers);
  std::vector<std::unique_ptr<grpc::ClientContext>> contexts;
  std::vector<std::thread> readers;
  for (int i = 0; i < kWatchers; ++i) {
    contexts.push_back(std::make_unique<grpc::ClientContext>());
    SetDeadline(contexts.back().get(), 30);
    HealthCheckRequest request;
    request.set_service(i % 2 == 0 ? "" : kApi);
    auto watch = stub->Watch(contexts.back().get(), request);
    HealthCheckResponse first;
    ASSERT_TRUE(watch->Read(&first));  // registered before the changes start
    seen[i].push_back(first.status());
    readers.emplace_back([&, i, watch = std::move(watch)]() mutable {
      HealthCheckResponse update;
      while (watch->Read(&update)) seen[i].push_back(update.status());
      ends[i] = watch->Finish();
    });
  }
  for (int round = 0; round < 300; ++round) served.health().SetServing(round % 2 == 0);
  served.health().Shutdown();
  for (std::thread& reader : readers) reader.join();
  for (int i = 0; i < kWatchers; ++i) {
    EXPECT_EQ(ends[i].error_code(), grpc::StatusCode::UNAVAILABLE) << i;
    ASSERT_FALSE(seen[i].empty());
    EXPECT_EQ(seen[i].back(), HealthCheckResponse::NOT_SERVING) << i;
    for (size_t k = 1; k < seen[i].size(); ++k) {
      EXPECT_NE(seen[i][k], seen[i][k - 1]) << "watcher " << i << " got a repeated status";
    }
  }
  // The streams' server ends (OnDone) may lag the clients' Finish; Shutdown waits for them and
  // returns at once since none is left open.
  const auto start = std::chrono::steady_clock::now();
  served.server().Shutdown();
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(2));
  EXPECT_EQ(served.health().watchers(), 0);
}

TEST(HealthServiceTest, WatchOfAnUnknownServiceSaysSoAndClientCancelEndsIt) {
  ServedServices served;
  std::unique_ptr<Health::Stub> stub = served.health_stub();
  grpc::ClientContext context;
  SetDeadline(&context, 30);
  HealthCheckRequest request;
  request.set_service("no.such.Service");
  std::unique_ptr<grpc::ClientReader<HealthCheckResponse>> watch = stub->Watch(&context, request);
  HealthCheckResponse update;
  ASSERT_TRUE(watch->Read(&update));
  EXPECT_EQ(update.status(), HealthCheckResponse::SERVICE_UNKNOWN);
  EXPECT_EQ(served.health().watchers(), 1);
  context.TryCancel();
  EXPECT_FALSE(watch->Read(&update));
  EXPECT_EQ(watch->Finish().error_code(), grpc::StatusCode::CANCELLED);
  for (int i = 0; i < 200 && served.health().watchers() > 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(served.health().watchers(), 0);
}

TEST(HealthServiceTest, KeysAreRequiredWhenGivenAndRefusalsCounted) {
  ServedServices served(ApiKeys::FromList({"health-key"}));
  served.health().SetServing(true);
  std::unique_ptr<Health::Stub> stub = served.health_stub();
  HealthCheckResponse response;
  grpc::Status missing = Check(*stub, "", &response);
  EXPECT_EQ(missing.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_THAT(missing.error_message(), HasSubstr("API key"));
  EXPECT_EQ(Check(*stub, "", &response, "wrong-key").error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  ASSERT_TRUE(Check(*stub, "", &response, "health-key").ok());
  EXPECT_EQ(response.status(), HealthCheckResponse::SERVING);

  grpc::ClientContext context;
  SetDeadline(&context);
  std::unique_ptr<grpc::ClientReader<HealthCheckResponse>> watch =
      stub->Watch(&context, HealthCheckRequest());
  EXPECT_FALSE(watch->Read(&response));
  EXPECT_EQ(watch->Finish().error_code(), grpc::StatusCode::UNAUTHENTICATED);

  const std::string text = served.metrics_text();
  EXPECT_THAT(text, HasSubstr("spqr_unauthenticated_requests_total{method=\"Health.Check\","
                              "reason=\"missing\"} 1"));
  EXPECT_THAT(text, HasSubstr("spqr_unauthenticated_requests_total{method=\"Health.Check\","
                              "reason=\"invalid\"} 1"));
  EXPECT_THAT(text, HasSubstr("spqr_unauthenticated_requests_total{method=\"Health.Watch\","
                              "reason=\"missing\"} 1"));
}

using Request = ReflectionService::Request;
using Response = ReflectionService::Response;

std::vector<std::string> FileNames(const Response& response) {
  std::vector<std::string> names;
  for (const std::string& bytes : response.file_descriptor_response().file_descriptor_proto()) {
    google::protobuf::FileDescriptorProto file;
    EXPECT_TRUE(file.ParseFromString(bytes));
    names.push_back(file.name());
  }
  return names;
}

TEST(ReflectionServiceTest, AnswersFromTheGeneratedPool) {
  // The generated pool holds the files linked into the binary; in spqr-server the service code
  // links spqr.pb.o, here this mention does.
  ASSERT_NE(spqr::v1::GenerateRequest::descriptor(), nullptr);
  ServedServices served;
  const ReflectionService& reflection = served.reflection();
  Request request;
  request.set_host("example");
  request.set_list_services("");
  Response response = reflection.Answer(request);
  EXPECT_EQ(response.valid_host(), "example");
  EXPECT_EQ(response.original_request().host(), "example");
  std::vector<std::string> services;
  for (const auto& service : response.list_services_response().service()) {
    services.push_back(service.name());
  }
  EXPECT_THAT(services, UnorderedElementsAre(kApi, "grpc.health.v1.Health",
                                             "grpc.reflection.v1alpha.ServerReflection"));

  request.set_file_containing_symbol("spqr.v1.SpqrService.Generate");
  response = reflection.Answer(request);
  ASSERT_FALSE(response.has_error_response()) << response.error_response().error_message();
  ASSERT_FALSE(FileNames(response).empty());
  EXPECT_EQ(FileNames(response)[0], "spqr/v1/spqr.proto");
  google::protobuf::FileDescriptorProto spqr;
  ASSERT_TRUE(spqr.ParseFromString(response.file_descriptor_response().file_descriptor_proto(0)));
  EXPECT_EQ(spqr.package(), "spqr.v1");
  EXPECT_EQ(spqr.service(0).name(), "SpqrService");

  request.set_file_by_filename("grpc/health/v1/health.proto");
  EXPECT_THAT(FileNames(reflection.Answer(request)), ElementsAre("grpc/health/v1/health.proto"));

  request.set_all_extension_numbers_of_type("spqr.v1.GenerateRequest");
  response = reflection.Answer(request);
  EXPECT_EQ(response.all_extension_numbers_response().base_type_name(), "spqr.v1.GenerateRequest");
  EXPECT_EQ(response.all_extension_numbers_response().extension_number_size(), 0);

  request.set_file_containing_symbol("spqr.v1.NoSuchThing");
  EXPECT_EQ(reflection.Answer(request).error_response().error_code(),
            static_cast<int>(grpc::StatusCode::NOT_FOUND));
  request.set_file_by_filename("no/such.proto");
  EXPECT_EQ(reflection.Answer(request).error_response().error_code(),
            static_cast<int>(grpc::StatusCode::NOT_FOUND));
  request.mutable_file_containing_extension()->set_containing_type("spqr.v1.GenerateRequest");
  request.mutable_file_containing_extension()->set_extension_number(1000);
  EXPECT_EQ(reflection.Answer(request).error_response().error_code(),
            static_cast<int>(grpc::StatusCode::NOT_FOUND));
  EXPECT_EQ(reflection.Answer(Request()).error_response().error_code(),
            static_cast<int>(grpc::StatusCode::UNIMPLEMENTED));
}

// One list_services request over a stream; the stream's final status.
grpc::Status ListOverTheWire(ServerReflection::Stub& stub, const char* key, int* services) {
  grpc::ClientContext context;
  SetDeadline(&context);
  if (key != nullptr) context.AddMetadata("authorization", std::string("Bearer ") + key);
  auto stream = stub.ServerReflectionInfo(&context);
  Request request;
  request.set_list_services("");
  stream->Write(request);
  stream->WritesDone();
  Response response;
  *services = 0;
  while (stream->Read(&response)) *services += response.list_services_response().service_size();
  return stream->Finish();
}

TEST(ReflectionServiceTest, StreamsAnswersAndRequiresKeysWhenGiven) {
  {
    ServedServices open;
    int services = 0;
    EXPECT_TRUE(ListOverTheWire(*open.reflection_stub(), nullptr, &services).ok());
    EXPECT_EQ(services, 3);
  }
  ServedServices guarded(ApiKeys::FromList({"reflection-key"}));
  std::unique_ptr<ServerReflection::Stub> stub = guarded.reflection_stub();
  int services = 0;
  EXPECT_EQ(ListOverTheWire(*stub, nullptr, &services).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(services, 0);
  EXPECT_EQ(ListOverTheWire(*stub, "bad", &services).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_TRUE(ListOverTheWire(*stub, "reflection-key", &services).ok());
  EXPECT_EQ(services, 3);
  EXPECT_THAT(guarded.metrics_text(),
              HasSubstr("spqr_unauthenticated_requests_total{method=\"ServerReflectionInfo\","
                        "reason=\"invalid\"} 1"));
}

}  // namespace
}  // namespace spqr
