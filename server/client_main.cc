// spqr-client: a command-line client of spqr-server.
//
//   spqr-client [--address HOST:PORT] [--timeout SECONDS] [--api-key KEY] [--ca-cert PEM
//               [--client-cert PEM --client-key PEM] [--tls-server-name NAME]] COMMAND ...
//   (--api-key defaults to $SPQR_API_KEY; --ca-cert switches to TLS)
//     generate PROMPT [--max-new-tokens N] [--temperature T] [--top-k K] [--top-p P] [--min-p P]
//                     [--seed S] [--repetition-penalty R] [--stop STRING]... [--ignore-eos]
//                     [--unary] [--no-bos]        streams the generated text to stdout
//     chat [MESSAGE] [--system TEXT] [--message ROLE:TEXT]... [--no-generation-prompt]
//          [generate's options but --no-bos]       chats (the model's chat template); the
//                                                 conversation is --system, the --message turns
//                                                 in order, then MESSAGE as the user's turn
//     score TEXT                                  log-likelihood of a text (JSON)
//     score --context C --continuation X [...]   log-likelihood of continuations (JSON)
//     info                                        model information (JSON)
//     abort REQUEST_ID                            cancels a live request; exit 0 iff found
//     health [--service NAME]                     prints the health status; exit 0 iff SERVING
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "google/protobuf/util/json_util.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "spqr/v1/spqr.grpc.pb.h"

namespace {

constexpr char kUsage[] =
    "usage: spqr-client [--address HOST:PORT] [--timeout SECONDS] [--api-key KEY]\n"
    "                   [--ca-cert PEM [--client-cert PEM --client-key PEM]\n"
    "                   [--tls-server-name NAME]] COMMAND ...\n"
    "  (--api-key defaults to $SPQR_API_KEY; --ca-cert connects with TLS)\n"
    "  generate PROMPT [--max-new-tokens N] [--temperature T] [--top-k K] [--top-p P]\n"
    "                  [--min-p P] [--seed S] [--repetition-penalty R] [--stop STRING]...\n"
    "                  [--ignore-eos] [--unary] [--no-bos]\n"
    "  chat [MESSAGE] [--system TEXT] [--message ROLE:TEXT]... [--no-generation-prompt]\n"
    "                 [the generate options but --no-bos]\n"
    "  score TEXT | score --context C --continuation X [--context C2 --continuation X2 ...]\n"
    "  info\n"
    "  abort REQUEST_ID\n"
    "  health [--service NAME]\n";

constexpr double kUnaryTimeoutSeconds = 60;

// Flags that take no value.
const char* const kSwitches[] = {"ignore_eos", "unary", "no_bos", "no_generation_prompt", "help"};

struct Args {
  std::vector<std::string> positional;
  std::multimap<std::string, std::string> flags;  // repeated flags keep their order

  bool Has(const std::string& name) const { return flags.count(name) > 0; }
  std::string Get(const std::string& name, const std::string& fallback = "") const {
    auto it = flags.find(name);
    return it == flags.end() ? fallback : it->second;
  }
  std::vector<std::string> GetAll(const std::string& name) const {
    std::vector<std::string> out;
    for (auto [it, end] = flags.equal_range(name); it != end; ++it) out.push_back(it->second);
    return out;
  }
};

bool ParseArgs(int argc, char** argv, Args* args, std::string* error) {
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    // "-h" in the command's place is help; later it may be a prompt ("generate -h").
    if (arg == "-h" && args->positional.empty()) {
      args->flags.emplace("help", "true");
      continue;
    }
    if (arg.size() < 3 || arg.substr(0, 2) != "--") {
      args->positional.push_back(arg);
      continue;
    }
    std::string name = absl::StrReplaceAll(arg.substr(2), {{"-", "_"}});
    std::string value;
    if (size_t eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name.resize(eq);
    } else if (std::find(std::begin(kSwitches), std::end(kSwitches), name) != std::end(kSwitches)) {
      value = "true";
    } else if (i + 1 < argc) {
      value = argv[++i];
    } else {
      *error = absl::StrCat("flag --", name, " needs a value");
      return false;
    }
    args->flags.emplace(name, value);
  }
  return true;
}

template <typename T>
bool ParseNumber(const Args& args, const std::string& name, T* out) {
  if (!args.Has(name)) return false;
  if constexpr (std::is_floating_point_v<T>) {
    double value;
    if (!absl::SimpleAtod(args.Get(name), &value)) {
      std::fprintf(stderr, "spqr-client: --%s expects a number\n", name.c_str());
      std::exit(2);
    }
    *out = static_cast<T>(value);
  } else {
    if (!absl::SimpleAtoi(args.Get(name), out)) {
      std::fprintf(stderr, "spqr-client: --%s expects an integer\n", name.c_str());
      std::exit(2);
    }
  }
  return true;
}

int Fail(const grpc::Status& status) {
  std::fprintf(stderr, "spqr-client: error %d: %s\n", static_cast<int>(status.error_code()),
               status.error_message().c_str());
  return 1;
}

// --timeout SECONDS; unary commands default to `fallback_seconds` so that a dead server cannot
// hang them (0: no deadline). Also sends the API key (--api-key, else $SPQR_API_KEY) if any.
void SetDeadline(const Args& args, grpc::ClientContext* context, double fallback_seconds = 0) {
  std::string api_key = args.Get("api_key");
  if (api_key.empty()) {
    const char* env = std::getenv("SPQR_API_KEY");
    if (env != nullptr) api_key = env;
  }
  if (!api_key.empty()) context->AddMetadata("authorization", absl::StrCat("Bearer ", api_key));
  double seconds = fallback_seconds;
  ParseNumber(args, "timeout", &seconds);
  if (seconds > 0) {
    context->set_deadline(std::chrono::system_clock::now() +
                          std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000)));
  }
}

bool ReadFile(const std::string& path, std::string* out) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  std::stringstream text;
  text << in.rdbuf();
  *out = text.str();
  return true;
}

void PrintJson(const google::protobuf::Message& message) {
  std::string json;
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = true;
  options.preserve_proto_field_names = true;
  (void)google::protobuf::util::MessageToJsonString(message, &json, options);
  std::printf("%s", json.c_str());
}

// The options Generate and Chat share (sampling, penalties, stopping).
template <typename Request>
void SetGenerationOptions(const Args& args, Request* request) {
  int32_t int_value;
  float float_value;
  uint64_t seed;
  if (ParseNumber(args, "max_new_tokens", &int_value)) {
    request->mutable_stopping()->set_max_new_tokens(int_value);
  }
  if (ParseNumber(args, "temperature", &float_value)) {
    request->mutable_sampling()->set_temperature(float_value);
  }
  if (ParseNumber(args, "top_k", &int_value)) request->mutable_sampling()->set_top_k(int_value);
  if (ParseNumber(args, "top_p", &float_value)) {
    request->mutable_sampling()->set_top_p(float_value);
  }
  if (ParseNumber(args, "min_p", &float_value)) {
    request->mutable_sampling()->set_min_p(float_value);
  }
  if (ParseNumber(args, "seed", &seed)) request->mutable_sampling()->set_seed(seed);
  if (ParseNumber(args, "repetition_penalty", &float_value)) {
    request->mutable_penalties()->set_repetition_penalty(float_value);
  }
  for (const std::string& stop : args.GetAll("stop")) {
    request->mutable_stopping()->add_stop_strings(stop);
  }
  if (args.Has("ignore_eos")) request->mutable_stopping()->set_ignore_eos(true);
}

// Runs a generating call, streamed (printing each text delta as it comes) or unary (--unary), and
// prints the finish reason and token counts to stderr.
template <typename Request, typename Unary, typename Streamed>
int RunGeneration(const Args& args, const Request& request, Unary unary, Streamed streamed) {
  grpc::ClientContext context;
  SetDeadline(args, &context);
  spqr::v1::GenerateResponse last;
  if (args.Has("unary")) {
    grpc::Status status = unary(&context, request, &last);
    if (!status.ok()) return Fail(status);
    std::printf("%s", last.text().c_str());
  } else {
    std::unique_ptr<grpc::ClientReader<spqr::v1::GenerateResponse>> reader =
        streamed(&context, request);
    spqr::v1::GenerateResponse response;
    while (reader->Read(&response)) {
      std::printf("%s", response.text().c_str());
      std::fflush(stdout);
      last = response;
    }
    grpc::Status status = reader->Finish();
    if (!status.ok()) {
      std::printf("\n");
      return Fail(status);
    }
  }
  std::printf("\n");
  std::fprintf(stderr, "[%s; %d prompt + %d generated tokens]\n",
               spqr::v1::FinishReason_Name(last.finish_reason()).c_str(),
               last.usage().prompt_tokens(), last.usage().completion_tokens());
  return 0;
}

int Generate(spqr::v1::SpqrService::Stub& stub, const Args& args) {
  if (args.positional.size() != 2) {
    std::fprintf(stderr, "spqr-client: generate takes one PROMPT argument\n%s", kUsage);
    return 2;
  }
  spqr::v1::GenerateRequest request;
  request.set_text(args.positional[1]);
  if (args.Has("no_bos")) request.set_add_bos(false);
  SetGenerationOptions(args, &request);
  return RunGeneration(
      args, request,
      [&](grpc::ClientContext* c, const spqr::v1::GenerateRequest& r,
          spqr::v1::GenerateResponse* out) { return stub.GenerateUnary(c, r, out); },
      [&](grpc::ClientContext* c, const spqr::v1::GenerateRequest& r) {
        return stub.Generate(c, r);
      });
}

// chat [--system TEXT] [--message ROLE:TEXT]... [MESSAGE]: the conversation in order (system,
// the --message turns, then MESSAGE as the user's last turn).
int Chat(spqr::v1::SpqrService::Stub& stub, const Args& args) {
  if (args.positional.size() > 2) {
    std::fprintf(stderr, "spqr-client: chat takes at most one MESSAGE argument\n%s", kUsage);
    return 2;
  }
  spqr::v1::ChatRequest request;
  if (args.Has("system")) {
    spqr::v1::ChatMessage* m = request.add_messages();
    m->set_role("system");
    m->set_content(args.Get("system"));
  }
  for (const std::string& turn : args.GetAll("message")) {
    const size_t colon = turn.find(':');
    if (colon == std::string::npos) {
      std::fprintf(stderr, "spqr-client: --message takes ROLE:TEXT, got '%s'\n", turn.c_str());
      return 2;
    }
    spqr::v1::ChatMessage* m = request.add_messages();
    m->set_role(turn.substr(0, colon));
    m->set_content(turn.substr(colon + 1));
  }
  if (args.positional.size() == 2) {
    spqr::v1::ChatMessage* m = request.add_messages();
    m->set_role("user");
    m->set_content(args.positional[1]);
  }
  if (args.Has("no_generation_prompt")) request.set_add_generation_prompt(false);
  SetGenerationOptions(args, &request);
  return RunGeneration(
      args, request,
      [&](grpc::ClientContext* c, const spqr::v1::ChatRequest& r, spqr::v1::GenerateResponse* out) {
        return stub.ChatUnary(c, r, out);
      },
      [&](grpc::ClientContext* c, const spqr::v1::ChatRequest& r) { return stub.Chat(c, r); });
}

int Score(spqr::v1::SpqrService::Stub& stub, const Args& args) {
  spqr::v1::ScoreRequest request;
  const std::vector<std::string> contexts = args.GetAll("context");
  const std::vector<std::string> continuations = args.GetAll("continuation");
  if (args.positional.size() == 2 && contexts.empty() && continuations.empty()) {
    request.set_text(args.positional[1]);
  } else if (args.positional.size() == 1 && !continuations.empty() &&
             contexts.size() == continuations.size()) {
    for (size_t i = 0; i < contexts.size(); ++i) {
      spqr::v1::ContinuationPair* pair = request.mutable_pairs()->add_pairs();
      pair->set_context(contexts[i]);
      pair->set_continuation(continuations[i]);
    }
  } else {
    std::fprintf(stderr,
                 "spqr-client: score takes TEXT, or as many --context as --continuation flags\n%s",
                 kUsage);
    return 2;
  }
  if (args.Has("no_bos")) request.set_add_bos(false);
  grpc::ClientContext context;
  SetDeadline(args, &context, kUnaryTimeoutSeconds);
  spqr::v1::ScoreResponse response;
  grpc::Status status = stub.Score(&context, request, &response);
  if (!status.ok()) return Fail(status);
  PrintJson(response);
  return 0;
}

int Info(spqr::v1::SpqrService::Stub& stub, const Args& args) {
  grpc::ClientContext context;
  SetDeadline(args, &context, kUnaryTimeoutSeconds);
  spqr::v1::ModelInfo info;
  grpc::Status status = stub.GetModelInfo(&context, spqr::v1::GetModelInfoRequest(), &info);
  if (!status.ok()) return Fail(status);
  PrintJson(info);
  return 0;
}

int Abort(spqr::v1::SpqrService::Stub& stub, const Args& args) {
  if (args.positional.size() != 2) {
    std::fprintf(stderr, "spqr-client: abort takes one REQUEST_ID argument\n%s", kUsage);
    return 2;
  }
  grpc::ClientContext context;
  SetDeadline(args, &context, kUnaryTimeoutSeconds);
  spqr::v1::AbortRequest request;
  request.set_request_id(args.positional[1]);
  spqr::v1::AbortResponse response;
  grpc::Status status = stub.Abort(&context, request, &response);
  if (!status.ok()) return Fail(status);
  std::printf("%s\n", response.found() ? "aborted" : "not found");
  return response.found() ? 0 : 1;
}

int Health(const std::shared_ptr<grpc::Channel>& channel, const Args& args) {
  auto stub = grpc::health::v1::Health::NewStub(channel);
  grpc::ClientContext context;
  SetDeadline(args, &context, kUnaryTimeoutSeconds);
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(args.Get("service"));
  grpc::health::v1::HealthCheckResponse response;
  grpc::Status status = stub->Check(&context, request, &response);
  if (!status.ok()) return Fail(status);
  std::printf("%s\n",
              grpc::health::v1::HealthCheckResponse::ServingStatus_Name(response.status()).c_str());
  return response.status() == grpc::health::v1::HealthCheckResponse::SERVING ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  Args args;
  std::string error;
  if (!ParseArgs(argc, argv, &args, &error)) {
    std::fprintf(stderr, "spqr-client: %s\n%s", error.c_str(), kUsage);
    return 2;
  }
  if (args.Has("help") || args.positional.empty()) {
    std::fprintf(args.Has("help") ? stdout : stderr, "%s", kUsage);
    return args.Has("help") ? 0 : 2;
  }
  const std::string address = args.Get("address", "127.0.0.1:50051");
  grpc::ChannelArguments channel_args;
  channel_args.SetMaxReceiveMessageSize(64 << 20);
  std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::InsecureChannelCredentials();
  if (args.Has("ca_cert")) {
    grpc::SslCredentialsOptions tls;
    std::string error_file;
    if (!ReadFile(args.Get("ca_cert"), &tls.pem_root_certs)) error_file = args.Get("ca_cert");
    if (args.Has("client_cert") && !ReadFile(args.Get("client_cert"), &tls.pem_cert_chain)) {
      error_file = args.Get("client_cert");
    }
    if (args.Has("client_key") && !ReadFile(args.Get("client_key"), &tls.pem_private_key)) {
      error_file = args.Get("client_key");
    }
    if (!error_file.empty()) {
      std::fprintf(stderr, "spqr-client: cannot read %s\n", error_file.c_str());
      return 2;
    }
    credentials = grpc::SslCredentials(tls);
    if (args.Has("tls_server_name")) {
      channel_args.SetSslTargetNameOverride(args.Get("tls_server_name"));
    }
  }
  std::shared_ptr<grpc::Channel> channel =
      grpc::CreateCustomChannel(address, credentials, channel_args);
  auto stub = spqr::v1::SpqrService::NewStub(channel);
  const std::string& command = args.positional[0];
  if (command == "generate") return Generate(*stub, args);
  if (command == "chat") return Chat(*stub, args);
  if (command == "score") return Score(*stub, args);
  if (command == "info") return Info(*stub, args);
  if (command == "abort") return Abort(*stub, args);
  if (command == "health") return Health(channel, args);
  std::fprintf(stderr, "spqr-client: unknown command '%s'\n%s", command.c_str(), kUsage);
  return 2;
}
