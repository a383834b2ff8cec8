#include "engine/runtime/model.h"

#include <filesystem>
#include <fstream>
#include <sstream>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "engine/backend/cpu/cpu_backend.h"
#include "engine/format/spqr_model.h"
#include "engine/model/safetensors.h"
#include "engine/util/status_macros.h"

#ifdef SPQR_WITH_CUDA
#include "engine/backend/cuda/cuda_backend.h"
#include "engine/backend/cuda/device_query.h"
#endif

namespace spqr {
namespace {

// Lower-case safetensors dtype name of the embedding, the dtype every dense weight shares.
std::string DenseWeightDtype(const LlamaWeights& weights) {
  return absl::AsciiStrToLower(std::string(DTypeName(weights.embed_tokens.dtype)));
}

// Fills the SpQR fields of `info` from config.json's quantization_config (the weights were bound
// with the same block, so a malformed one has already been refused).
absl::Status FillQuantizationInfo(const std::string& dir, QuantizationInfo* info) {
  const std::string path = (std::filesystem::path(dir) / "config.json").string();
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot be read"));
  std::stringstream text;
  text << in.rdbuf();
  ASSIGN_OR_RETURN(const std::optional<SpqrQuantizationInfo> q,
                   ParseSpqrQuantizationConfig(text.str(), path));
  if (!q) return absl::OkStatus();
  info->method = q->method;
  info->format_version = q->format_version;
  info->bits_per_param_formula = q->avg_bits_formula;
  info->bits_per_param_real = q->avg_bits_real;
  info->wbits = q->wbits;
  info->beta1 = q->beta1;
  info->beta2 = q->beta2;
  info->stats_bits = q->stats_bits;
  info->outlier_share = q->outlier_share;
  info->tau = q->tau;
  info->lambda = q->lambda;
  info->act_order = q->act_order;
  info->quantizer_version = q->quantizer_version;
  info->calibration = q->calibration;
  return absl::OkStatus();
}

BackendChoice ChooseAutoBackend() {
#ifdef SPQR_WITH_CUDA
  absl::StatusOr<std::vector<CudaDeviceInfo>> devices = QueryCudaDevices();
  if (!devices.ok()) {
    return {"cpu", absl::StrCat("no usable CUDA device: ", devices.status().message())};
  }
  if (devices->empty()) {
    return {"cpu", "the CUDA driver exposes no device (is CUDA_VISIBLE_DEVICES empty?)"};
  }
  const CudaDeviceInfo& device = devices->front();
  if (!device.can_run_kernels) {
    return {"cpu", absl::StrCat("cuda:0 ", device.name,
                                " cannot run this build's kernels: ", device.unsupported_reason)};
  }
  return {"cuda", absl::StrCat("CUDA device found: ", DescribeCudaDevices({device}))};
#else
  return {"cpu", "this build has no CUDA backend (configured without nvcc)"};
#endif
}

absl::StatusOr<std::unique_ptr<Backend>> CreateBackend(const std::string& name,
                                                       std::shared_ptr<const LlamaWeights> weights,
                                                       const ModelLoadOptions& options) {
  if (name == "cpu") {
    CpuBackendOptions cpu_options;
    cpu_options.num_threads = options.num_threads;
    ASSIGN_OR_RETURN(cpu_options.spqr_kernel, ParseSpqrCpuKernel(options.spqr_cpu_kernel));
    ASSIGN_OR_RETURN(cpu_options.dense_kernel, ParseDenseCpuKernel(options.dense_cpu_kernel));
    return CreateCpuBackend(std::move(weights), cpu_options);
  }
  if (name == "cuda") {
#ifdef SPQR_WITH_CUDA
    absl::StatusOr<std::unique_ptr<Backend>> backend =
        CreateCudaBackend(std::move(weights), CudaBackendOptions());
    if (!backend.ok()) {
      return absl::Status(backend.status().code(),
                          absl::StrCat("backend \"cuda\": ", backend.status().message()));
    }
    return backend;
#else
    return absl::FailedPreconditionError(
        "backend \"cuda\": this build has no CUDA backend (configure with -DSPQR_CUDA=ON on a "
        "machine with the CUDA toolkit)");
#endif
  }
  return absl::InvalidArgumentError(
      absl::StrCat("backend \"", name, "\" is unknown; expected \"cpu\", \"cuda\" or \"auto\""));
}

}  // namespace

BackendChoice ResolveBackend(const std::string& backend) {
  if (backend == "auto") return ChooseAutoBackend();
  return {backend, ""};
}

absl::StatusOr<std::unique_ptr<LoadedModel>> LoadModel(const std::string& dir,
                                                       const ModelLoadOptions& options) {
  auto model = std::make_unique<LoadedModel>();
  model->dir = dir;
  ASSIGN_OR_RETURN(model->config, LoadModelConfig(dir));
  ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> checkpoint, Checkpoint::Open(dir));
  ASSIGN_OR_RETURN(
      model->weights,
      BindLlamaWeights(std::shared_ptr<const Checkpoint>(std::move(checkpoint)), model->config));

  ASSIGN_OR_RETURN(model->tokenizer,
                   OpenModelTokenizer(dir, model->config.bos_token_id, model->config.eos_token_ids,
                                      &model->tokenizer_note));
  if (model->tokenizer->vocab_size() > model->config.vocab_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        dir, ": the ", model->tokenizer->kind(), " tokenizer has ", model->tokenizer->vocab_size(),
        " tokens but config.json vocab_size is ", model->config.vocab_size));
  }

  ASSIGN_OR_RETURN(model->chat, LoadModelChat(dir, *model->tokenizer));

  model->quantization.method = "none";
  model->quantization.weight_dtype = DenseWeightDtype(*model->weights);
  RETURN_IF_ERROR(FillQuantizationInfo(dir, &model->quantization));
  std::string backend_name = options.backend;
  if (backend_name == "auto") {
    const BackendChoice choice = ChooseAutoBackend();
    backend_name = choice.name;
    model->backend_note =
        absl::StrCat("backend auto: chose ", choice.name, " (", choice.reason, ")");
  }
  ASSIGN_OR_RETURN(model->backend, CreateBackend(backend_name, model->weights, options));
  // Keep one copy of the weights: the backend's, where it repacked layers into its own layout.
  if (auto resident = model->backend->resident_weights()) model->weights = std::move(resident);
  return model;
}

}  // namespace spqr
