#include "server/server_app.h"

#include <pthread.h>
#include <signal.h>

#include <cstdio>
#include <exception>
#include <fstream>
#include <memory>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "engine/util/status_macros.h"
#include "engine/util/system_memory.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server.h"
#include "grpcpp/server_builder.h"
#include "prometheus/exposer.h"
#include "server/api_keys.h"
#include "server/health_service.h"
#include "server/log.h"
#include "server/metrics.h"
#include "server/reflection_service.h"
#include "server/spqr_service.h"
#include "server/startup_checks.h"

namespace spqr {
namespace {

constexpr char kServiceName[] = "spqr.v1.SpqrService";
constexpr absl::Duration kWarmupTimeout = absl::Minutes(10);

// "127.0.0.1" of "127.0.0.1:50051", "[::1]" of "[::1]:0".
std::string HostOf(const std::string& address) { return address.substr(0, address.rfind(':')); }

// Prints a line on stdout at once: tests and scripts parse these.
void Announce(const std::string& line) {
  std::printf("%s\n", line.c_str());
  std::fflush(stdout);
}

// Blocks SIGTERM/SIGINT in every thread (call before starting any) and waits for them on a
// dedicated thread, so no signal handler runs arbitrary code.
class SignalWaiter {
 public:
  SignalWaiter() {
    sigemptyset(&signals_);
    sigaddset(&signals_, SIGTERM);
    sigaddset(&signals_, SIGINT);
    pthread_sigmask(SIG_BLOCK, &signals_, nullptr);
    thread_ = std::thread([this] {
      const timespec poll = {0, 100 * 1000 * 1000};
      while (!stop_.HasBeenNotified()) {
        const int signal = sigtimedwait(&signals_, nullptr, &poll);
        if (signal == SIGTERM || signal == SIGINT) {
          received_ = signal;
          if (!got_signal_.HasBeenNotified()) got_signal_.Notify();
        }
      }
    });
  }
  ~SignalWaiter() {
    stop_.Notify();
    thread_.join();
  }
  absl::Notification& got_signal() { return got_signal_; }
  int received() const { return received_; }

 private:
  sigset_t signals_;
  absl::Notification stop_;
  absl::Notification got_signal_;
  std::atomic<int> received_{0};
  std::thread thread_;
};

// Runs one short greedy generation through the engine loop: readiness means the whole path works.
absl::Status WarmUp(Engine& engine) {
  GenerateRequest request;
  request.request_id = "warmup";
  const int32_t bos = engine.model().tokenizer ? engine.model().tokenizer->bos_id() : -1;
  request.prompt_tokens = {bos >= 0 ? bos : 0,
                           1 % static_cast<int32_t>(engine.model().config.vocab_size)};
  request.stopping.max_new_tokens = 2;
  request.stopping.ignore_eos = true;
  request.sampling.temperature = 0.0f;
  auto done = std::make_shared<absl::Notification>();
  auto result = std::make_shared<OutputChunk>();
  absl::Status submitted = engine.Submit(std::move(request), [done, result](OutputChunk chunk) {
    if (!chunk.finished) return;
    *result = std::move(chunk);
    done->Notify();
  });
  if (!submitted.ok()) return submitted;
  if (!done->WaitForNotificationWithTimeout(kWarmupTimeout)) {
    engine.Cancel("warmup");
    return absl::DeadlineExceededError("the warm-up request did not finish in 10 minutes");
  }
  if (result->finish_reason == FinishReason::kError) return result->error;
  if (result->usage.completion_tokens != 2) {
    return absl::InternalError(absl::StrFormat("the warm-up request generated %d tokens, not 2",
                                               result->usage.completion_tokens));
  }
  return absl::OkStatus();
}

// The whole of a PEM file named by config key `key`.
absl::StatusOr<std::string> ReadPemFile(const std::string& path, absl::string_view key) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open (", key, ")"));
  std::stringstream text;
  text << in.rdbuf();
  if (text.str().find("-----BEGIN ") == std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a PEM file (", key, ")"));
  }
  return text.str();
}

}  // namespace

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const TlsSection& tls) {
  if (tls.cert_file.empty()) return grpc::InsecureServerCredentials();
  grpc::SslServerCredentialsOptions options(
      tls.require_client_cert      ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
      : tls.client_ca_file.empty() ? GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE
                                   : GRPC_SSL_REQUEST_CLIENT_CERTIFICATE_AND_VERIFY);
  grpc::SslServerCredentialsOptions::PemKeyCertPair pair;
  ASSIGN_OR_RETURN(pair.cert_chain, ReadPemFile(tls.cert_file, "server.tls.cert_file"));
  ASSIGN_OR_RETURN(pair.private_key, ReadPemFile(tls.key_file, "server.tls.key_file"));
  options.pem_key_cert_pairs.push_back(std::move(pair));
  if (!tls.client_ca_file.empty()) {
    ASSIGN_OR_RETURN(options.pem_root_certs,
                     ReadPemFile(tls.client_ca_file, "server.tls.client_ca_file"));
  }
  return grpc::SslServerCredentials(options);
}

EngineOptions ToEngineOptions(const ServerConfig& config) {
  EngineOptions options;
  options.kv_block_size = config.engine.kv_block_size;
  options.kv_cache_bytes = config.engine.kv_cache_bytes;
  options.max_running_requests = config.engine.max_running_requests;
  options.max_batched_tokens = config.engine.max_batched_tokens;
  options.max_queued_requests = config.engine.max_queued_requests;
  options.max_queued_prompt_tokens = config.engine.max_queued_prompt_tokens;
  options.enable_prefix_caching = config.engine.prefix_caching;
  options.max_step_logits_bytes = config.engine.max_step_logits_bytes;
  return options;
}

ModelLoadOptions ToModelLoadOptions(const ServerConfig& config) {
  ModelLoadOptions options;
  options.backend = config.model.backend;
  options.num_threads = config.model.threads;
  options.spqr_cpu_kernel = config.model.spqr_cpu_kernel;
  options.dense_cpu_kernel = config.model.dense_cpu_kernel;
  return options;
}

// The CPU backend keeps the KV cache in host memory: a budget beyond what this process may use
// is refused before the model is loaded when the CPU backend will run it (the backend checks the
// exact pool size again). The CUDA backend checks its pool against the device's free memory.
namespace {
absl::Status CheckKvCacheFitsHostMemory(const ServerConfig& config, const std::string& backend) {
  if (backend != "cpu") return absl::OkStatus();
  const HostMemoryLimit limit = GetHostMemoryLimit();
  if (limit.bytes > 0 && config.engine.kv_cache_bytes > limit.bytes) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "engine.kv_cache_bytes=%d exceeds %s of %d bytes; the %s backend keeps the KV cache in "
        "host memory, so it could only fail to allocate (docs/operations.md#sizing)",
        config.engine.kv_cache_bytes, limit.source, limit.bytes, backend));
  }
  return absl::OkStatus();
}
}  // namespace

absl::Status RunServer(const ServerConfig& config) {
  SetLogLevel(config.server.log_level);
  // "auto" is resolved here the way the loader will resolve it, so that a KV budget the CPU
  // backend could not hold is refused before the model is loaded.
  RETURN_IF_ERROR(CheckKvCacheFitsHostMemory(config, ResolveBackend(config.model.backend).name));
  SignalWaiter signals;  // before any other thread exists

  ServerMetrics metrics(config.metrics.vllm_compatible_names);
  SpqrServiceImpl service(config, &metrics);

  absl::StatusOr<ApiKeys> loaded_keys =
      ApiKeys::Load(config.server.auth.api_keys_file, config.server.auth.api_keys_env);
  if (!loaded_keys.ok()) return loaded_keys.status();
  const ApiKeys api_keys = *std::move(loaded_keys);
  const bool keys_for_health = api_keys.enabled() && !config.server.auth.exempt_health;
  const bool keys_for_reflection = api_keys.enabled() && !config.server.auth.exempt_reflection;
  if (api_keys.enabled()) {
    Logf(LogLevel::kInfo, "API keys required for spqr.v1%s%s calls (%d keys)",
         keys_for_health ? ", health" : "", keys_for_reflection ? ", reflection" : "",
         api_keys.size());
  }
  service.SetApiKeys(api_keys);
  // Our own health and reflection services (not gRPC's default health service and reflection
  // plugin): they can require a key, and health starts NOT_SERVING.
  HealthService health({kServiceName}, keys_for_health ? &api_keys : nullptr, &metrics);
  ReflectionService reflection(
      {kServiceName, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"},
      keys_for_reflection ? &api_keys : nullptr, &metrics);
  if (keys_for_health) {
    metrics.ExportUnauthenticatedSeries("Health.Check");
    metrics.ExportUnauthenticatedSeries("Health.Watch");
  }
  if (keys_for_reflection) metrics.ExportUnauthenticatedSeries("ServerReflectionInfo");
  // Checked before anything listens, so that a wrong file or directory is reported as such.
  RETURN_IF_ERROR(CheckModelDir(config.model.dir));
  RETURN_IF_ERROR(CheckTlsFiles(config.server.tls));
  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> credentials =
      MakeServerCredentials(config.server.tls);
  if (!credentials.ok()) return credentials.status();

  grpc::EnableDefaultHealthCheckService(false);
  grpc::ServerBuilder builder;
  int bound_port = 0;
  builder.AddListeningPort(config.server.listen, *credentials, &bound_port);
  if (config.server.max_concurrent_streams > 0) {
    builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS,
                               config.server.max_concurrent_streams);
  }
  // Bounds what one request can make the server read and hold; responses are bounded by the
  // request limits instead (a Score with top_logprobs can legitimately be larger than a request).
  builder.SetMaxReceiveMessageSize(static_cast<int>(config.server.max_message_bytes));
  builder.RegisterService(&service);
  builder.RegisterService(&health);
  builder.RegisterService(&reflection);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || bound_port == 0) {
    return absl::UnavailableError(DiagnoseListenFailure(config.server.listen));
  }
  // Start-up failed after the port was bound: end health Watch streams (which would otherwise
  // hold Shutdown forever) and give other open streams a moment.
  auto stop_grpc_after_failure = [&] {
    health.Shutdown();
    server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  };
  Announce(absl::StrCat("listening on ", HostOf(config.server.listen), ":", bound_port));

  std::unique_ptr<prometheus::Exposer> exposer;
  if (config.metrics.enabled) {
    const std::string address = absl::StrCat(config.metrics.address, ":", config.metrics.port);
    try {  // prometheus-cpp (civetweb) reports bind failures by exception
      exposer = std::make_unique<prometheus::Exposer>(address, 2);
    } catch (const std::exception& e) {
      stop_grpc_after_failure();
      return absl::UnavailableError(
          absl::StrCat("cannot serve metrics on ", address, " (metrics.address/port): ", e.what()));
    }
    exposer->RegisterCollectable(metrics.registry());
    exposer->RegisterCollectable(metrics.engine_collector());
    const std::vector<int> ports = exposer->GetListeningPorts();
    Announce(absl::StrCat("metrics on ", config.metrics.address, ":",
                          ports.empty() ? config.metrics.port : ports.front()));
  }

  Logf(LogLevel::kInfo, "loading model %s (backend %s)", config.model.dir, config.model.backend);
  const absl::Time load_start = absl::Now();
  absl::StatusOr<std::unique_ptr<LoadedModel>> model =
      LoadModel(config.model.dir, ToModelLoadOptions(config));
  if (!model.ok()) {
    stop_grpc_after_failure();
    return absl::Status(model.status().code(),
                        absl::StrCat("loading the model: ", model.status().message()));
  }
  Logf(LogLevel::kInfo, "model loaded in %.1f s; %s; %s tokenizer",
       absl::ToDoubleSeconds(absl::Now() - load_start), (*model)->backend->description(),
       (*model)->tokenizer->kind());
  if (!(*model)->backend_note.empty()) Logf(LogLevel::kInfo, "%s", (*model)->backend_note);
  if (!(*model)->tokenizer_note.empty()) {
    Logf(LogLevel::kWarning, "%s", (*model)->tokenizer_note);
  }
  absl::StatusOr<std::unique_ptr<Engine>> engine = Engine::Create(*std::move(model), [&] {
    EngineOptions options = ToEngineOptions(config);
    // `metrics` outlives the engine (declared first in this function).
    options.step_observer = [&metrics](const StepRecord& step) { metrics.RecordStep(step); };
    // A backend that broke for good (a sticky CUDA error) must not look healthy: NOT_SERVING, so
    // that load balancers and Kubernetes take this replica out instead of receiving errors.
    options.on_backend_fault = [&health, &metrics](const absl::Status& fault) {
      Logf(LogLevel::kError, "backend fault, health NOT_SERVING from now on: %s", fault.message());
      health.SetServing(false);
      metrics.SetReady(false);
    };
    return options;
  }());
  if (!engine.ok()) {
    stop_grpc_after_failure();
    return absl::Status(engine.status().code(),
                        absl::StrCat("creating the engine: ", engine.status().message()));
  }
  metrics.SetEngine(engine->get());
  if (absl::Status warm = WarmUp(**engine); !warm.ok()) {
    stop_grpc_after_failure();
    metrics.SetEngine(nullptr);
    return absl::Status(warm.code(), absl::StrCat("warm-up: ", warm.message()));
  }
  service.SetEngine(engine->get());
  health.SetServing(true);
  metrics.SetReady(true);
  // A fault in the first requests may have been reported before SetServing(true) above.
  if (!(*engine)->health().ok()) {
    health.SetServing(false);
    metrics.SetReady(false);
  }
  const EngineStats stats = (*engine)->GetStats();
  Logf(LogLevel::kInfo, "ready in %.2f s: %s on %s, %d KV blocks of %d tokens",
       absl::ToDoubleSeconds(absl::Now() - load_start), config.model.dir,
       (*engine)->model().backend->name(), stats.kv_blocks_total, stats.kv_block_size);
  Announce("ready");

  signals.got_signal().WaitForNotification();
  Logf(LogLevel::kInfo, "signal %d: draining (up to %.1f s)", signals.received(),
       config.server.drain_timeout_seconds);
  health.SetServing(false);
  metrics.SetReady(false);
  service.StartDraining();
  (*engine)->StopAccepting();
  if (!service.WaitForIdle(absl::Seconds(config.server.drain_timeout_seconds))) {
    Logf(LogLevel::kWarning, "drain timeout: cancelling %d in-flight call(s)",
         service.inflight_calls());
    service.CancelAll();
    if (!service.WaitForIdle(absl::Seconds(5))) {
      Logf(LogLevel::kWarning, "%d call(s) still in flight after cancelling",
           service.inflight_calls());
    }
  }
  // Every call has ended (or was cancelled above); what is left are idle connections and calls
  // whose client stopped reading, which the short shutdown deadline cancels.
  health.Shutdown();  // ends Watch streams
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::milliseconds(200));
  server->Wait();
  Logf(LogLevel::kDebug, "gRPC server stopped");
  exposer.reset();
  Logf(LogLevel::kDebug, "metrics endpoint stopped");
  metrics.SetEngine(nullptr);
  engine->reset();
  Logf(LogLevel::kInfo, "stopped");
  return absl::OkStatus();
}

}  // namespace spqr
