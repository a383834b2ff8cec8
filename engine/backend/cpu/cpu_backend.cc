#include "engine/backend/cpu/cpu_backend.h"

#include <omp.h>

#include <algorithm>
#include <cstring>
#include <new>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "engine/backend/cpu/attention.h"
#include "engine/backend/cpu/embedding.h"
#include "engine/backend/cpu/linear.h"
#include "engine/backend/cpu/linear_bf16.h"
#include "engine/backend/cpu/paged_kv_pool.h"
#include "engine/backend/cpu/rms_norm.h"
#include "engine/backend/cpu/rope.h"
#include "engine/backend/cpu/spqr_linear.h"
#include "engine/backend/cpu/spqr_tile_layout.h"
#include "engine/backend/cpu/swiglu.h"
#include "engine/backend/forward/weight_checks.h"
#include "engine/util/status_macros.h"
#include "engine/util/system_memory.h"

namespace spqr {
namespace {

using cpu::AttentionSequence;
using cpu::AttentionShape;
using cpu::PackedActivations;

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
  CpuBackend(std::shared_ptr<const LlamaWeights> weights, int num_threads,
             std::unordered_map<const PackedSpqrLayer*, std::unique_ptr<cpu::SpqrTileLayout>> tiles,
             cpu::TileIsa isa, bool resident, bool bf16_dot)
      : w_(std::move(weights)),
        c_(w_->config),
        num_threads_(num_threads),
        inv_freq_(cpu::ComputeRopeInvFreq(c_.head_dim, c_.rope_theta, c_.rope_scaling)),
        tiles_(std::move(tiles)),
        isa_(isa),
        resident_(resident),
        bf16_dot_(bf16_dot) {}

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
  absl::Status ValidatePlan(const StepPlan& plan) const;
  void RunLayer(int64_t layer, std::span<const AttentionSequence> seqs);
  // y = packed_ W^T (+ b) through the layer's tile layout when it has one, else cpu::Linear.
  void Project(const LinearTensors& l, float* y);

  std::shared_ptr<const LlamaWeights> w_;
  const ModelConfig& c_;
  const int num_threads_;
  const std::vector<float> inv_freq_;
  cpu::PagedKvPool pool_;
  KvPoolShape pool_shape_{0, 0};

  // Per-step scratch, reused across steps (Forward is called by one thread at a time).
  std::vector<int32_t> ids_;
  std::vector<int64_t> positions_;
  std::vector<float> x_, h_, q_, k_, v_, attn_, gate_, up_, proj_;
  PackedActivations packed_;
  // Tile layouts of the SpQR layers the int8 kernel runs, keyed by their source layer.
  const std::unordered_map<const PackedSpqrLayer*, std::unique_ptr<cpu::SpqrTileLayout>> tiles_;
  const cpu::TileIsa isa_;
  const bool resident_;  // w_ is the backend's own copy (tile layouts hold the SpQR codes)
  const bool bf16_dot_;  // dense BF16 layers use the bf16 dot-product kernel
};

void CpuBackend::Project(const LinearTensors& l, float* y) {
  if (l.spqr != nullptr && !tiles_.empty()) {
    auto it = tiles_.find(l.spqr.get());
    if (it != tiles_.end()) {
      return cpu::SpqrLinearTiled(*it->second, l, packed_, y, num_threads_, isa_);
    }
  }
  if (bf16_dot_ && l.spqr == nullptr && l.weight.dtype == DType::kBF16) {
    return cpu::LinearBf16(l, packed_, y, num_threads_);
  }
  cpu::Linear(l, packed_, y, num_threads_);
}

absl::Status CpuBackend::ValidatePlan(const StepPlan& plan) const {
  if (pool_.num_blocks() == 0) {
    return absl::FailedPreconditionError("CPU backend: Forward before AllocateKvPool");
  }
  const int64_t bs = pool_.block_size();
  std::unordered_set<int64_t> written_slots;
  for (size_t i = 0; i < plan.seqs.size(); ++i) {
    const SequenceStep& s = plan.seqs[i];
    const int64_t n = static_cast<int64_t>(s.tokens.size());
    if (n == 0) return absl::InvalidArgumentError(absl::StrFormat("seqs[%d]: no tokens", i));
    if (s.start_pos < 0) {
      return absl::InvalidArgumentError(
          absl::StrFormat("seqs[%d]: start_pos %d is negative", i, s.start_pos));
    }
    if (s.num_logits < 0 || s.num_logits > n) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "seqs[%d]: num_logits %d outside [0, %d] (the chunk's tokens)", i, s.num_logits, n));
    }
    for (int64_t t = 0; t < n; ++t) {
      if (s.tokens[t] < 0 || s.tokens[t] >= c_.vocab_size) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "seqs[%d].tokens[%d]: id %d outside [0, %d)", i, t, s.tokens[t], c_.vocab_size));
      }
    }
    const int64_t end = static_cast<int64_t>(s.start_pos) + n;
    const int64_t blocks_needed = (end + bs - 1) / bs;
    if (static_cast<int64_t>(s.block_table.size()) < blocks_needed) {
      return absl::InvalidArgumentError(
          absl::StrFormat("seqs[%d]: block table has %d blocks, positions [0, %d) need %d", i,
                          s.block_table.size(), end, blocks_needed));
    }
    for (int64_t b = 0; b < blocks_needed; ++b) {
      if (s.block_table[b] < 0 || s.block_table[b] >= pool_.num_blocks()) {
        return absl::InvalidArgumentError(
            absl::StrFormat("seqs[%d].block_table[%d]: block %d outside the pool [0, %d)", i, b,
                            s.block_table[b], pool_.num_blocks()));
      }
    }
    // Two sequences writing one slot in the same step would race; reject it.
    for (int64_t p = s.start_pos; p < end; ++p) {
      const int64_t slot = static_cast<int64_t>(s.block_table[p / bs]) * bs + p % bs;
      if (!written_slots.insert(slot).second) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "seqs[%d]: position %d writes KV slot %d of block %d, already written in this step", i,
            p, p % bs, s.block_table[p / bs]));
      }
    }
  }
  return absl::OkStatus();
}

void AddInPlace(float* x, const float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] += y[i];
}

void CpuBackend::RunLayer(int64_t li, std::span<const AttentionSequence> seqs) {
  const DecoderLayerWeights& l = w_->layers[li];
  const int64_t n = static_cast<int64_t>(ids_.size());
  const int64_t hidden = c_.hidden_size;
  const int64_t hd = c_.head_dim;
  const int64_t q_floats = c_.num_attention_heads * hd;
  const int64_t kv_floats = c_.num_key_value_heads * hd;
  const float eps = static_cast<float>(c_.rms_norm_eps);
  const int nt = num_threads_;

  // Attention block.
  cpu::RmsNorm(x_.data(), n, hidden, l.input_layernorm, eps, h_.data(), nt);
  cpu::PackActivations(h_.data(), n, hidden, &packed_);
  Project(l.q_proj, q_.data());
  Project(l.k_proj, k_.data());
  Project(l.v_proj, v_.data());
#pragma omp parallel for num_threads(nt) schedule(static) if (n > 1)
  for (int64_t t = 0; t < n; ++t) {
    cpu::ApplyRope(q_.data() + t * q_floats, c_.num_attention_heads, k_.data() + t * kv_floats,
                   c_.num_key_value_heads, hd, positions_[t], inv_freq_.data());
  }
  const AttentionShape shape{c_.num_attention_heads, c_.num_key_value_heads, hd};
  cpu::StoreKv(k_.data(), v_.data(), seqs, shape, li, &pool_);
  cpu::PagedAttention(q_.data(), seqs, shape, li, pool_, attn_.data(), nt);
  cpu::PackActivations(attn_.data(), n, q_floats, &packed_);
  Project(l.o_proj, proj_.data());
  AddInPlace(x_.data(), proj_.data(), n * hidden);

  // MLP block.
  const int64_t inter = c_.intermediate_size;
  cpu::RmsNorm(x_.data(), n, hidden, l.post_attention_layernorm, eps, h_.data(), nt);
  cpu::PackActivations(h_.data(), n, hidden, &packed_);
  Project(l.gate_proj, gate_.data());
  Project(l.up_proj, up_.data());
  cpu::SwiGlu(gate_.data(), up_.data(), n * inter, gate_.data(), nt);
  cpu::PackActivations(gate_.data(), n, inter, &packed_);
  Project(l.down_proj, proj_.data());
  AddInPlace(x_.data(), proj_.data(), n * hidden);
}

absl::Status CpuBackend::Forward(const StepPlan& plan, StepOutput* out) {
  RETURN_IF_ERROR(ValidatePlan(plan));
  const int64_t hidden = c_.hidden_size;

  ids_.clear();
  positions_.clear();
  std::vector<AttentionSequence> seqs;
  int64_t total_logits = 0;
  for (const SequenceStep& s : plan.seqs) {
    seqs.push_back({static_cast<int64_t>(ids_.size()), static_cast<int64_t>(s.tokens.size()),
                    s.start_pos, s.block_table.data()});
    for (size_t i = 0; i < s.tokens.size(); ++i) {
      ids_.push_back(s.tokens[i]);
      positions_.push_back(s.start_pos + static_cast<int64_t>(i));
    }
    total_logits += s.num_logits;
  }
  const int64_t n = static_cast<int64_t>(ids_.size());
  out->vocab_size = static_cast<int32_t>(c_.vocab_size);
  out->logits.assign(total_logits * c_.vocab_size, 0.0f);
  if (n == 0) return absl::OkStatus();

  const int64_t q_floats = c_.num_attention_heads * c_.head_dim;
  const int64_t kv_floats = c_.num_key_value_heads * c_.head_dim;
  x_.resize(n * hidden);
  h_.resize(n * hidden);
  proj_.resize(n * hidden);
  q_.resize(n * q_floats);
  attn_.resize(n * q_floats);
  k_.resize(n * kv_floats);
  v_.resize(n * kv_floats);
  gate_.resize(n * c_.intermediate_size);
  up_.resize(n * c_.intermediate_size);

  cpu::EmbeddingLookup(w_->embed_tokens, ids_, hidden, x_.data());
  for (int64_t li = 0; li < c_.num_hidden_layers; ++li) RunLayer(li, seqs);
  if (total_logits == 0) return absl::OkStatus();

  // Final norm and lm_head only for the rows whose logits were asked for.
  std::vector<float> selected;
  selected.reserve(total_logits * hidden);
  for (size_t i = 0; i < plan.seqs.size(); ++i) {
    const int64_t last = seqs[i].row_offset + seqs[i].num_tokens;
    for (int64_t r = last - plan.seqs[i].num_logits; r < last; ++r) {
      selected.insert(selected.end(), x_.begin() + r * hidden, x_.begin() + (r + 1) * hidden);
    }
  }
  cpu::RmsNorm(selected.data(), total_logits, hidden, w_->norm, static_cast<float>(c_.rms_norm_eps),
               selected.data(), num_threads_);
  cpu::PackActivations(selected.data(), total_logits, hidden, &packed_);
  Project(w_->lm_head, out->logits.data());
  return absl::OkStatus();
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
  // kAuto stays exact: on the machines measured so far the bf16 kernel was no faster end to end
  // (prefill is bound by cache bandwidth, decode by memory; docs/cpu-performance.md), so it would
  // change the numerics for nothing.
  const bool bf16_dot = options.dense_kernel == DenseCpuKernel::kBf16;
  const bool int8 = options.spqr_kernel == SpqrCpuKernel::kInt8 ||
                    (options.spqr_kernel == SpqrCpuKernel::kAuto && isa != cpu::TileIsa::kScalar);
  std::unordered_map<const PackedSpqrLayer*, std::unique_ptr<cpu::SpqrTileLayout>> tiles;
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
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
    for (size_t i = 0; i < linears.size(); ++i) {
      auto layout = cpu::BuildSpqrTileLayout(linears[i]->spqr);
      if (layout.ok()) {
        built[i] = std::move(*layout);
      } else {
        errors[i] = layout.status();
      }
    }
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
