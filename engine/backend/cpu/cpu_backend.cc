#include "engine/backend/cpu/cpu_backend.h"

#include <omp.h>

#include <new>
#include <string>
#include <unordered_map>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "engine/backend/cpu/cpu_forward_ops.h"
#include "engine/backend/cpu/linear_bf16.h"
#include "engine/backend/cpu/paged_kv_pool.h"
#include "engine/backend/cpu/spqr_linear.h"
#include "engine/backend/cpu/spqr_tile_layout.h"
#include "engine/backend/cpu/worker_pool.h"
#include "engine/backend/forward/llama_forward.h"
#include "engine/backend/forward/weight_checks.h"
#include "engine/util/status_macros.h"
#include "engine/util/system_memory.h"

namespace spqr {
namespace {

// Every projection of the model, lm_head last.
std::vector<const LinearTensors*> AllLinears(const LlamaWeights& w) {
  std::vector<const LinearTensors*> out;
  for (const DecoderLayerWeights& l : w.layers) {
    out.insert(out.end(), {&l.q_proj, &l.k_proj, &l.v_proj, &l.o_proj, &l.gate_proj, &l.up_proj,
                           &l.down_proj});
  }
  out.push_back(&w.lm_head);
  return out;
}

int64_t LinearBytes(const LinearTensors& l) {
  if (l.spqr != nullptr) return cpu::SpqrLinearBytes(l);
  return static_cast<int64_t>(l.weight.nbytes + (l.bias ? l.bias->nbytes : 0));
}

class CpuBackend : public Backend {
 public:
  CpuBackend(std::shared_ptr<const LlamaWeights> weights, int num_threads, cpu::SpqrTileMap tiles,
             cpu::TileIsa isa, bool resident, bool bf16_dot)
      : w_(std::move(weights)),
        c_(w_->config),
        num_threads_(num_threads),
        tiles_(std::move(tiles)),
        isa_(isa),
        resident_(resident),
        bf16_dot_(bf16_dot),
        ops_(c_, &tiles_, &pool_, {num_threads, isa, bf16_dot}) {}

  std::string name() const override { return "cpu"; }

  std::string description() const override {
    int spqr_layers = 0;
    for (const LinearTensors* l : AllLinears(*w_)) spqr_layers += l->spqr != nullptr;
    return absl::StrFormat(
        "cpu: %d threads; SpQR layers: %d of %d on the int8 tile kernel (%s), the rest exact; "
        "dense BF16 layers: %s kernel",
        num_threads_, static_cast<int>(tiles_.size()), spqr_layers, cpu::TileIsaName(isa_),
        bf16_dot_ ? "bf16" : "exact");
  }

  int64_t KvBytesPerToken() const override {
    return cpu::PagedKvPool::FloatsPerToken(c_.num_hidden_layers, c_.num_key_value_heads,
                                            c_.head_dim) *
           static_cast<int64_t>(sizeof(float));
  }

  absl::Status AllocateKvPool(const KvPoolShape& shape) override {
    if (shape.num_blocks <= 0 || shape.block_size <= 0) {
      return absl::InvalidArgumentError(
          absl::StrFormat("KV pool: num_blocks %d and block_size %d must be positive",
                          shape.num_blocks, shape.block_size));
    }
    // The pool is zero-filled host memory: a size beyond what this process may use ends in
    // std::bad_alloc or, with overcommit, in the OOM killer later. Refuse it here instead.
    int64_t bytes = 0;
    const bool overflow = __builtin_mul_overflow(
        static_cast<int64_t>(shape.num_blocks) * shape.block_size, KvBytesPerToken(), &bytes);
    const HostMemoryLimit limit = GetHostMemoryLimit();
    if (overflow || (limit.bytes > 0 && bytes > limit.bytes)) {
      return absl::ResourceExhaustedError(absl::StrFormat(
          "KV pool of %d blocks x %d tokens x %d bytes per token = %s bytes exceeds %s of %d "
          "bytes; the CPU backend keeps the KV cache in host memory",
          shape.num_blocks, shape.block_size, KvBytesPerToken(),
          overflow ? std::string("more than 2^63") : absl::StrCat(bytes), limit.source,
          limit.bytes));
    }
    try {
      pool_ = cpu::PagedKvPool(c_.num_hidden_layers, c_.num_key_value_heads, c_.head_dim,
                               shape.num_blocks, shape.block_size);
    } catch (const std::bad_alloc&) {
      return absl::ResourceExhaustedError(
          absl::StrFormat("cannot allocate a KV pool of %d bytes in host memory", bytes));
    }
    pool_shape_ = shape;
    return absl::OkStatus();
  }

  KvPoolShape kv_pool_shape() const override { return pool_shape_; }

  BackendMemoryStats memory_stats() const override {
    BackendMemoryStats s;
    int64_t bytes = static_cast<int64_t>(w_->norm.nbytes);
    for (const auto& [source, layout] : tiles_) bytes += layout->bytes();  // repacked codes
    for (const LinearTensors* l : AllLinears(*w_)) bytes += LinearBytes(*l);
    for (const DecoderLayerWeights& l : w_->layers) {
      bytes += static_cast<int64_t>(l.input_layernorm.nbytes) +
               static_cast<int64_t>(l.post_attention_layernorm.nbytes);
    }
    s.weight_bytes = bytes;
    s.kv_pool_bytes = pool_.bytes();
    return s;
  }

  absl::Status Forward(const StepPlan& plan, StepOutput* out) override;

  std::shared_ptr<const LlamaWeights> resident_weights() const override {
    return resident_ ? w_ : nullptr;
  }

 private:
  std::shared_ptr<const LlamaWeights> w_;
  const ModelConfig& c_;
  const int num_threads_;
  cpu::PagedKvPool pool_;
  KvPoolShape pool_shape_{0, 0};
  // Tile layouts of the SpQR layers the int8 kernel runs, keyed by their source layer.
  const cpu::SpqrTileMap tiles_;
  const cpu::TileIsa isa_;
  const bool resident_;  // w_ is the backend's own copy (tile layouts hold the SpQR codes)
  const bool bf16_dot_;  // dense BF16 layers use the bf16 dot-product kernel
  // The ops over pool_ and tiles_ (declared above it), with their per-step scratch reused across
  // steps (Forward is called by one thread at a time).
  cpu::CpuForwardOps ops_;
};

absl::Status CpuBackend::Forward(const StepPlan& plan, StepOutput* out) {
  RETURN_IF_ERROR(ValidateStepPlan(plan, c_.vocab_size, pool_shape_, "CPU"));
  return RunLlamaForward(*w_, plan, ops_, out);
}

}  // namespace

absl::StatusOr<SpqrCpuKernel> ParseSpqrCpuKernel(const std::string& name) {
  if (name == "auto") return SpqrCpuKernel::kAuto;
  if (name == "exact") return SpqrCpuKernel::kExact;
  if (name == "int8") return SpqrCpuKernel::kInt8;
  return absl::InvalidArgumentError(
      absl::StrFormat("SpQR CPU kernel \"%s\": expected auto, exact or int8", name));
}

absl::StatusOr<DenseCpuKernel> ParseDenseCpuKernel(const std::string& name) {
  if (name == "auto") return DenseCpuKernel::kAuto;
  if (name == "exact") return DenseCpuKernel::kExact;
  if (name == "bf16") return DenseCpuKernel::kBf16;
  return absl::InvalidArgumentError(
      absl::StrFormat("dense CPU kernel \"%s\": expected auto, exact or bf16", name));
}

SpqrCpuKernel ResolveSpqrCpuKernel(SpqrCpuKernel kernel) {
  if (kernel != SpqrCpuKernel::kAuto) return kernel;
  return cpu::BestTileIsa() != cpu::TileIsa::kScalar ? SpqrCpuKernel::kInt8 : SpqrCpuKernel::kExact;
}

DenseCpuKernel ResolveDenseCpuKernel(DenseCpuKernel kernel) {
  if (kernel != DenseCpuKernel::kAuto) return kernel;
  // kAuto takes the bf16 kernel where it exists: VDPBF16PS does twice the multiply-adds of an
  // fp32 FMA per instruction, so prefill (compute-bound) runs ~2.8x faster; decode is bound by
  // memory either way. One kernel for every token count keeps a sequence's logits independent of
  // how it was batched or chunked (docs/cpu-performance.md).
  return cpu::Bf16DotSupported() ? DenseCpuKernel::kBf16 : DenseCpuKernel::kExact;
}

const char* SpqrCpuKernelName(SpqrCpuKernel kernel) {
  switch (kernel) {
    case SpqrCpuKernel::kAuto:
      return "auto";
    case SpqrCpuKernel::kExact:
      return "exact";
    case SpqrCpuKernel::kInt8:
      return "int8";
  }
  return "?";
}

const char* DenseCpuKernelName(DenseCpuKernel kernel) {
  switch (kernel) {
    case DenseCpuKernel::kAuto:
      return "auto";
    case DenseCpuKernel::kExact:
      return "exact";
    case DenseCpuKernel::kBf16:
      return "bf16";
  }
  return "?";
}

absl::StatusOr<std::unique_ptr<Backend>> CreateCpuBackend(
    std::shared_ptr<const LlamaWeights> weights, const CpuBackendOptions& options) {
  if (weights == nullptr) return absl::InvalidArgumentError("CreateCpuBackend: no weights");
  if (options.num_threads < 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("CPU backend: num_threads %d is negative", options.num_threads));
  }
  RETURN_IF_ERROR(CheckLlamaWeights(*weights, "CPU"));
  const int threads = options.num_threads > 0 ? options.num_threads : omp_get_max_threads();
  const cpu::TileIsa isa = cpu::BestTileIsa();
  if (options.dense_kernel == DenseCpuKernel::kBf16 && !cpu::Bf16DotSupported()) {
    return absl::FailedPreconditionError(
        "CPU backend: dense kernel bf16 needs AVX512-BF16, which this CPU lacks (use auto or "
        "exact)");
  }
  const bool bf16_dot = ResolveDenseCpuKernel(options.dense_kernel) == DenseCpuKernel::kBf16;
  const bool int8 = ResolveSpqrCpuKernel(options.spqr_kernel) == SpqrCpuKernel::kInt8;
  cpu::SpqrTileMap tiles;
  bool resident = false;
  if (int8) {
    // The backend's own copy of the weight views, whose SpQR layers point at the slim sources of
    // their tile layouts: the packed codes are then held once, in the layouts.
    auto own = std::make_shared<LlamaWeights>(*weights);
    std::vector<LinearTensors*> linears;
    for (DecoderLayerWeights& l : own->layers) {
      for (LinearTensors* p :
           {&l.q_proj, &l.k_proj, &l.v_proj, &l.o_proj, &l.gate_proj, &l.up_proj, &l.down_proj}) {
        if (p->spqr != nullptr && cpu::TileLayoutSupports(*p->spqr).ok()) linears.push_back(p);
      }
    }
    if (own->lm_head.spqr != nullptr && cpu::TileLayoutSupports(*own->lm_head.spqr).ok()) {
      linears.push_back(&own->lm_head);
    }
    // Repacking is independent per layer: spread it over the threads.
    std::vector<std::unique_ptr<cpu::SpqrTileLayout>> built(linears.size());
    std::vector<absl::Status> errors(linears.size());
    cpu::ParallelForDynamic(threads, static_cast<int64_t>(linears.size()), [&](int64_t i, int) {
      auto layout = cpu::BuildSpqrTileLayout(linears[i]->spqr);
      if (layout.ok()) {
        built[i] = std::move(*layout);
      } else {
        errors[i] = layout.status();
      }
    });
    for (size_t i = 0; i < linears.size(); ++i) {
      RETURN_IF_ERROR(errors[i]);
      linears[i]->spqr = built[i]->source;
      tiles.emplace(built[i]->source.get(), std::move(built[i]));
    }
    if (!linears.empty()) {
      weights = std::move(own);
      resident = true;
    }
  }
  return std::unique_ptr<Backend>(
      new CpuBackend(std::move(weights), threads, std::move(tiles), isa, resident, bf16_dot));
}

}  // namespace spqr
