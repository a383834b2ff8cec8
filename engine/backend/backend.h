// The compute backend interface: one forward step over a ragged batch of sequences whose keys and
// values live in a paged KV pool owned by the backend. The CPU backend and the CUDA backend both
// implement it; the engine loop and the scheduler never see which one runs.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace spqr {

struct LlamaWeights;

// Geometry of the paged KV pool: `num_blocks` blocks of `block_size` token slots, each slot holding
// K and V for every layer and KV head.
struct KvPoolShape {
  int32_t num_blocks = 0;
  int32_t block_size = 16;
};

// One sequence's share of a step: `tokens` are new tokens at positions
// [start_pos, start_pos + tokens.size()); keys/values of positions [0, start_pos) are already in
// the pool. `block_table[i]` is the physical block holding positions [i*block_size,
// (i+1)*block_size); it must cover start_pos + tokens.size() positions. Logits are produced for the
// last `num_logits` tokens of the chunk (1 for a decode or final prefill chunk, tokens.size() for
// prompt scoring, 0 for a prefill chunk that is not the last).
struct SequenceStep {
  std::span<const int32_t> tokens;
  int32_t start_pos = 0;
  std::span<const int32_t> block_table;
  int32_t num_logits = 1;
};

struct StepPlan {
  std::vector<SequenceStep> seqs;
};

// Row-major [sum(num_logits), vocab] fp32 logits, rows in plan order.
struct StepOutput {
  int32_t vocab_size = 0;
  std::vector<float> logits;
  const float* row(size_t r) const { return logits.data() + r * vocab_size; }
};

struct BackendMemoryStats {
  int64_t device_used_bytes = 0;   // 0 on the CPU backend
  int64_t device_total_bytes = 0;  // 0 on the CPU backend
  int64_t weight_bytes = 0;        // bytes of weights the backend reads per forward
  int64_t kv_pool_bytes = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;
  // One line for the start-up log: the backend and the choices it made (kernels, threads, device).
  virtual std::string description() const { return name(); }
  // Bytes one token slot takes in the KV pool (all layers, K and V).
  virtual int64_t KvBytesPerToken() const = 0;
  // (Re)allocates the KV pool. Must be called before Forward.
  virtual absl::Status AllocateKvPool(const KvPoolShape& shape) = 0;
  virtual KvPoolShape kv_pool_shape() const = 0;
  // Runs one step. Validates the plan (token ids in range, block tables long enough, block ids in
  // the pool) and returns INVALID_ARGUMENT instead of touching memory it does not own.
  virtual absl::Status Forward(const StepPlan& plan, StepOutput* out) = 0;
  virtual BackendMemoryStats memory_stats() const = 0;
  // OK while the backend can run steps. After a fault it cannot recover from (on CUDA a "sticky"
  // error such as an illegal address, which poisons the device context for the whole process)
  // the error that broke it: every later Forward fails, and the engine stops taking requests and
  // reports itself unhealthy instead of serving garbage (Engine::health()).
  virtual absl::Status health() const { return absl::OkStatus(); }
  // The weights the backend keeps resident when it replaced parts of the bound ones by its own
  // layout (the CPU backend's SpQR tile layouts), so the loader can drop the originals and hold
  // the weights once; null when the backend uses the bound weights as they are.
  virtual std::shared_ptr<const LlamaWeights> resident_weights() const { return nullptr; }
};

}  // namespace spqr
