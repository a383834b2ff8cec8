// The CPU backend's ForwardOps (engine/backend/forward/forward_ops.h): every op is the cpu::
// function of the same name over host fp32 buffers, so RunLlamaForward on these ops computes what
// the CPU backend promises (cpu_backend.h): deterministic, batch-independent results.
//
// Projections: the input is packed (cpu::PackActivations) once per Project call and shared by all
// of its projections; a SpQR layer with a tile layout runs the int8 tile kernel, a dense BF16 layer
// the bf16 dot-product kernel when enabled, every other layer cpu::Linear (the exact kernels).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <unordered_map>
#include <vector>

#include "engine/backend/cpu/attention.h"
#include "engine/backend/cpu/linear.h"
#include "engine/backend/cpu/paged_kv_pool.h"
#include "engine/backend/cpu/spqr_tile_kernel.h"
#include "engine/backend/cpu/spqr_tile_layout.h"
#include "engine/backend/forward/forward_ops.h"
#include "engine/model/model_config.h"

namespace spqr::cpu {

// Tile layouts of the SpQR layers the int8 kernel runs, keyed by their source layer.
using SpqrTileMap = std::unordered_map<const PackedSpqrLayer*, std::unique_ptr<SpqrTileLayout>>;

struct CpuOpsOptions {
  int num_threads = 1;
  TileIsa isa = TileIsa::kScalar;  // the int8 kernel's instruction set (tiles only)
  bool bf16_dot = false;           // dense BF16 layers on the bf16 dot-product kernel
};

class CpuForwardOps final : public ForwardOps {
 public:
  // `config`, `tiles` and `pool` are borrowed and must outlive the ops; the pool may be
  // reallocated between steps (it is read through the pointer at every op).
  CpuForwardOps(const ModelConfig& config, const SpqrTileMap* tiles, PagedKvPool* pool,
                const CpuOpsOptions& options);

  // The step's spans are kept (not copied) until the next BeginStep: every op runs synchronously
  // inside RunLlamaForward, which keeps them alive for the step.
  absl::Status BeginStep(const StepLayout& step) override;
  absl::Status Embed(const TensorView& embed_tokens, Act out) override;
  absl::Status RmsNorm(Act in, const TensorView& weight, float eps, Act out) override;
  absl::Status Project(Act in, std::span<const Projection> projections) override;
  absl::Status Rope(Act q, Act k) override;
  absl::Status StoreKv(int64_t layer, Act k, Act v) override;
  absl::Status Attention(int64_t layer, Act q, Act out) override;
  absl::Status SwiGlu(Act gate, Act up, Act out) override;
  absl::Status AddInPlace(Act x, Act y) override;
  absl::Status GatherLogitRows(Act in, Act out) override;
  absl::Status ReadLogits(Act logits, std::span<float> out) override;

 private:
  struct Buffer {
    std::vector<float> data;  // [rows, cols]; storage reused across steps
    int64_t rows = 0;
    int64_t cols = 0;
  };
  Buffer& buf(Act a) { return bufs_[static_cast<int>(a)]; }
  // y = packed_ · l^T (+ bias) with the kernel `l` runs on (see the top of this file).
  void Linear(const LinearTensors& l, float* y);

  const ModelConfig& c_;
  const SpqrTileMap* const tiles_;
  PagedKvPool* const pool_;
  const CpuOpsOptions options_;
  const std::vector<float> inv_freq_;
  const AttentionShape shape_;

  std::span<const int32_t> ids_;
  std::span<const int64_t> positions_;
  std::span<const int64_t> logit_rows_;
  std::vector<AttentionSequence> seqs_;
  Buffer bufs_[static_cast<int>(Act::kLogits) + 1];
  PackedActivations packed_;
};

}  // namespace spqr::cpu
