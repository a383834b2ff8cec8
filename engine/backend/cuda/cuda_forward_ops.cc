#include "engine/backend/cuda/cuda_forward_ops.h"

#include <algorithm>
#include <cstring>
#include <limits>

#include "absl/strings/str_format.h"
#include "engine/backend/cuda/add.cuh"
#include "engine/backend/cuda/cast_f32.cuh"
#include "engine/backend/cuda/cuda_status.h"
#include "engine/backend/cuda/gather_rows.cuh"
#include "engine/backend/cuda/rms_norm.cuh"
#include "engine/backend/cuda/rope.cuh"
#include "engine/backend/cuda/silu_mul.cuh"
#include "engine/backend/cuda/spqr_gpu_linear.cuh"
#include "engine/util/status_macros.h"

namespace spqr {
namespace {

constexpr int64_t kInt32Max = std::numeric_limits<int32_t>::max();

// Prefixes the op's name, keeping the code.
absl::Status OpStatus(const char* op, const absl::Status& status) {
  if (status.ok()) return status;
  return absl::Status(status.code(), absl::StrFormat("CUDA op %s: %s", op, status.message()));
}

// Grows `buffer` to at least `bytes` (contents are not kept).
absl::Status Grow(DeviceBuffer& buffer, size_t bytes, const char* what) {
  if (buffer.size() >= bytes) return absl::OkStatus();
  buffer = DeviceBuffer();  // free first, so that the old and new buffers need not both fit
  absl::StatusOr<DeviceBuffer> grown = DeviceBuffer::Allocate(bytes);
  if (!grown.ok()) {
    return absl::Status(
        grown.status().code(),
        absl::StrFormat("allocating %d bytes of %s: %s", bytes, what, grown.status().message()));
  }
  buffer = *std::move(grown);
  return absl::OkStatus();
}

size_t AlignUp(size_t bytes) { return (bytes + 15) / 16 * 16; }

}  // namespace

PinnedBuffer::~PinnedBuffer() {
  if (data_ != nullptr) cudaFreeHost(data_);
}

absl::Status PinnedBuffer::Reserve(size_t bytes) {
  if (size_ >= bytes) return absl::OkStatus();
  if (data_ != nullptr) cudaFreeHost(data_);
  data_ = nullptr;
  size_ = 0;
  CUDA_RETURN_IF_ERROR(cudaMallocHost(&data_, bytes));
  size_ = bytes;
  return absl::OkStatus();
}

CudaForwardOps::CudaForwardOps(const ModelConfig& config, const CudaWeights& weights,
                               cudaStream_t stream, const CublasHandle& cublas,
                               const float* inv_freq)
    : c_(config), weights_(weights), stream_(stream), cublas_(cublas), inv_freq_(inv_freq) {}

int64_t CudaForwardOps::scratch_bytes() const {
  int64_t bytes = static_cast<int64_t>(cast_.size() + workspace_.size() + meta_.size());
  for (const ActBuffer& a : acts_) bytes += static_cast<int64_t>(a.memory.size());
  return bytes;
}

absl::Status CudaForwardOps::BeginStep(const StepLayout& step) {
  return OpStatus("BeginStep", DoBeginStep(step));
}

absl::Status CudaForwardOps::DoBeginStep(const StepLayout& step) {
  if (pool_.data == nullptr) return absl::FailedPreconditionError("no KV pool allocated");
  // Normally idle (ReadLogits waited for it); after a step abandoned by an error, work of that step
  // may still read the staging buffer or the buffers this step may reallocate.
  CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
  const int64_t n = static_cast<int64_t>(step.token_ids.size());
  const int64_t num_logits = static_cast<int64_t>(step.logit_rows.size());
  if (n > kInt32Max || static_cast<int64_t>(step.seqs.size()) > kInt32Max) {
    return absl::InvalidArgumentError(absl::StrFormat("%d rows do not fit the kernels' int32", n));
  }
  // Activation buffers.
  const int64_t h = c_.hidden_size;
  const int64_t q = c_.num_attention_heads * c_.head_dim;
  const int64_t kv = c_.num_key_value_heads * c_.head_dim;
  const int64_t inter = c_.intermediate_size;
  const struct {
    Act act;
    int64_t rows, cols;
  } shapes[] = {{Act::kX, n, h},
                {Act::kH, n, h},
                {Act::kProj, n, h},
                {Act::kQ, n, q},
                {Act::kAttn, n, q},
                {Act::kK, n, kv},
                {Act::kV, n, kv},
                {Act::kGate, n, inter},
                {Act::kUp, n, inter},
                {Act::kFinal, num_logits, h},
                {Act::kLogits, num_logits, c_.vocab_size}};
  for (const auto& s : shapes) {
    ActBuffer& a = act(s.act);
    RETURN_IF_ERROR(
        Grow(a.memory, static_cast<size_t>(s.rows * s.cols) * sizeof(float), "activations"));
    a.data = a.memory.as<float>();
    a.rows = s.rows;
    a.cols = s.cols;
  }

  // Metadata, int32 throughout: ids [n] | positions [n] | seqs [num_seqs] | block tables | logit
  // rows [L], each section 16-byte aligned.
  const int64_t bs = pool_.block_size;
  std::vector<AttentionSeqDevice> seqs(step.seqs.size());
  int64_t table_entries = 0;
  int64_t max_positions = 0;
  for (size_t i = 0; i < step.seqs.size(); ++i) {
    const StepSequence& s = step.seqs[i];
    const int64_t end = s.start_pos + s.num_tokens;
    const int64_t blocks = (end + bs - 1) / bs;
    if (end > kInt32Max || table_entries + blocks > kInt32Max ||
        static_cast<int64_t>(s.block_table.size()) < blocks) {
      return absl::InvalidArgumentError(
          absl::StrFormat("sequence %d: positions up to %d with %d block-table entries", i, end,
                          s.block_table.size()));
    }
    seqs[i] = {static_cast<int32_t>(s.row_offset), static_cast<int32_t>(s.num_tokens),
               static_cast<int32_t>(s.start_pos), static_cast<int32_t>(table_entries)};
    table_entries += blocks;
    max_positions = std::max(max_positions, end);
  }
  const size_t ids_off = 0;
  const size_t pos_off = AlignUp(ids_off + n * sizeof(int32_t));
  const size_t seqs_off = AlignUp(pos_off + n * sizeof(int32_t));
  const size_t tables_off = AlignUp(seqs_off + seqs.size() * sizeof(AttentionSeqDevice));
  const size_t logits_off = AlignUp(tables_off + table_entries * sizeof(int32_t));
  const size_t total = AlignUp(logits_off + num_logits * sizeof(int32_t));
  RETURN_IF_ERROR(staging_.Reserve(total));
  RETURN_IF_ERROR(Grow(meta_, total, "step metadata"));
  char* host = static_cast<char*>(staging_.data());
  std::memcpy(host + ids_off, step.token_ids.data(), n * sizeof(int32_t));
  int32_t* pos = reinterpret_cast<int32_t*>(host + pos_off);
  for (int64_t r = 0; r < n; ++r) {
    if (step.positions[r] < 0 || step.positions[r] > kInt32Max) {
      return absl::InvalidArgumentError(
          absl::StrFormat("row %d: position %d outside int32", r, step.positions[r]));
    }
    pos[r] = static_cast<int32_t>(step.positions[r]);
  }
  std::memcpy(host + seqs_off, seqs.data(), seqs.size() * sizeof(AttentionSeqDevice));
  int32_t* tables = reinterpret_cast<int32_t*>(host + tables_off);
  for (size_t i = 0; i < step.seqs.size(); ++i) {
    const int32_t count = (i + 1 < seqs.size() ? seqs[i + 1].block_table_offset
                                               : static_cast<int32_t>(table_entries)) -
                          seqs[i].block_table_offset;
    std::memcpy(tables + seqs[i].block_table_offset, step.seqs[i].block_table.data(),
                count * sizeof(int32_t));
  }
  int32_t* logit_rows = reinterpret_cast<int32_t*>(host + logits_off);
  for (int64_t i = 0; i < num_logits; ++i) logit_rows[i] = static_cast<int32_t>(step.logit_rows[i]);
  CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(meta_.data(), host, total, cudaMemcpyHostToDevice, stream_));
  // The staging buffer is rewritten by the next step's BeginStep, after the stream is drained, so
  // one buffer suffices.
  char* dev = static_cast<char*>(meta_.data());
  token_ids_ = reinterpret_cast<const int32_t*>(dev + ids_off);
  positions_ = reinterpret_cast<const int32_t*>(dev + pos_off);
  seqs_ = reinterpret_cast<const AttentionSeqDevice*>(dev + seqs_off);
  block_tables_ = reinterpret_cast<const int32_t*>(dev + tables_off);
  logit_rows_ = reinterpret_cast<const int32_t*>(dev + logits_off);
  num_seqs_ = static_cast<int32_t>(seqs.size());
  rows_ = static_cast<int32_t>(n);
  logit_count_ = static_cast<int32_t>(num_logits);
  max_positions_ = static_cast<int32_t>(max_positions);
  return absl::OkStatus();
}

absl::Status CudaForwardOps::Embed(const TensorView& embed_tokens, Act out) {
  constexpr char kOp[] = "Embed";
  ASSIGN_OR_RETURN(const CudaTensor table, weights_.Tensor(embed_tokens, kOp));
  ActBuffer& o = act(out);
  GatherRowsParams p;
  p.table = table.data;
  p.table_dtype = table.dtype;
  p.table_rows = c_.vocab_size;
  p.indices = token_ids_;
  p.output = o.data;
  p.rows = o.rows;
  p.cols = o.cols;
  return OpStatus(kOp, LaunchGatherRows(p, stream_));
}

absl::Status CudaForwardOps::RmsNorm(Act in, const TensorView& weight, float eps, Act out) {
  constexpr char kOp[] = "RmsNorm";
  ASSIGN_OR_RETURN(const CudaTensor w, weights_.Tensor(weight, kOp));
  const ActBuffer& i = act(in);
  ActBuffer& o = act(out);
  if (w.numel != i.cols || o.cols != i.cols || o.rows != i.rows) {
    return absl::InternalError(absl::StrFormat(
        "CUDA op %s: weight %s has %d elements for rows of %d", kOp, weight.name, w.numel, i.cols));
  }
  RmsNormParams p;
  p.input = i.data;
  p.weight = w.data;
  p.weight_dtype = w.dtype;
  p.output = o.data;
  p.rows = i.rows;
  p.dim = i.cols;
  p.input_row_stride = i.cols;
  p.output_row_stride = o.cols;
  p.eps = eps;
  return OpStatus(kOp, LaunchRmsNorm(p, stream_));
}

absl::Status CudaForwardOps::Project(Act in, std::span<const Projection> projections) {
  return OpStatus("Project", DoProject(in, projections));
}

absl::Status CudaForwardOps::SpqrLinear(const SpqrGpuDeviceLayer& layer, const float* x, float* y,
                                        int64_t batch) {
  const int64_t need = SpqrGpuLinearWorkspaceBytes(layer.view(), batch);
  RETURN_IF_ERROR(Grow(workspace_, static_cast<size_t>(need), "SpQR workspace"));
  SpqrGpuLinearParams p;
  p.layer = layer.view();
  p.x = x;
  p.y = y;
  p.batch = batch;
  p.workspace = workspace_.data();
  p.workspace_bytes = static_cast<int64_t>(workspace_.size());
  p.cublas = &cublas_;
  return LaunchSpqrGpuLinear(p, stream_);
}

absl::Status CudaForwardOps::DoProject(Act in, std::span<const Projection> projections) {
  const ActBuffer& x = act(in);
  DType cast_dtype = DType::kF32;  // kF32: x not cast yet
  for (const Projection& proj : projections) {
    ASSIGN_OR_RETURN(const CudaLinear* l, weights_.Linear(*proj.linear, "Project"));
    ActBuffer& y = act(proj.out);
    if (l->in_features != x.cols || l->out_features != y.cols || y.rows != x.rows) {
      return absl::InternalError(
          absl::StrFormat("layer [%d, %d] does not map the input [%d, %d] to the output [%d, %d]",
                          l->out_features, l->in_features, x.rows, x.cols, y.rows, y.cols));
    }
    if (x.rows == 0) continue;
    if (l->spqr != nullptr) {
      RETURN_IF_ERROR(SpqrLinear(*l->spqr, x.data, y.data, x.rows));
    } else {
      const void* operand = x.data;
      if (l->weight.dtype != DType::kF32) {
        // All projections of one input share its cast (they share the checkpoint's dtype).
        if (cast_dtype != l->weight.dtype) {
          const size_t bytes = static_cast<size_t>(x.rows * x.cols) * DTypeSize(l->weight.dtype);
          RETURN_IF_ERROR(Grow(cast_, bytes, "16-bit activations"));
          CastF32Params c;
          c.input = x.data;
          c.output = cast_.data();
          c.output_dtype = l->weight.dtype;
          c.count = x.rows * x.cols;
          RETURN_IF_ERROR(LaunchCastF32(c, stream_));
          cast_dtype = l->weight.dtype;
        }
        operand = cast_.data();
      }
      DenseGemmParams g;
      g.x = operand;
      g.w = l->weight.data;
      g.y = y.data;
      g.dtype = l->weight.dtype;
      g.m = x.rows;
      g.n = l->out_features;
      g.k = l->in_features;
      RETURN_IF_ERROR(DenseGemm(cublas_, g));
    }
    if (l->bias.data != nullptr) {
      AddBiasParams b;
      b.y = y.data;
      b.bias = l->bias.data;
      b.bias_dtype = l->bias.dtype;
      b.rows = y.rows;
      b.cols = y.cols;
      RETURN_IF_ERROR(LaunchAddBias(b, stream_));
    }
  }
  return absl::OkStatus();
}

absl::Status CudaForwardOps::Rope(Act q, Act k) {
  ActBuffer& qb = act(q);
  ActBuffer& kb = act(k);
  RopeParams p;
  p.q = qb.data;
  p.k = kb.data;
  p.positions = positions_;
  p.inv_freq = inv_freq_;
  p.num_tokens = qb.rows;
  p.num_q_heads = static_cast<int32_t>(c_.num_attention_heads);
  p.num_kv_heads = static_cast<int32_t>(c_.num_key_value_heads);
  p.head_dim = static_cast<int32_t>(c_.head_dim);
  p.q_token_stride = qb.cols;
  p.k_token_stride = kb.cols;
  return OpStatus("Rope", LaunchRope(p, stream_));
}

absl::Status CudaForwardOps::StoreKv(int64_t layer, Act k, Act v) {
  StoreKvParams p;
  p.k = act(k).data;
  p.v = act(v).data;
  p.seqs = seqs_;
  p.block_tables = block_tables_;
  p.num_seqs = num_seqs_;
  p.rows = rows_;
  p.layer = static_cast<int32_t>(layer);
  p.pool = pool_;
  return OpStatus("StoreKv", LaunchStoreKv(p, stream_));
}

absl::Status CudaForwardOps::Attention(int64_t layer, Act q, Act out) {
  PagedAttentionParams p;
  p.q = act(q).data;
  p.out = act(out).data;
  p.seqs = seqs_;
  p.block_tables = block_tables_;
  p.num_seqs = num_seqs_;
  p.rows = rows_;
  p.max_positions = max_positions_;
  p.num_heads = static_cast<int32_t>(c_.num_attention_heads);
  p.layer = static_cast<int32_t>(layer);
  p.pool = pool_;
  return OpStatus("Attention", LaunchPagedAttention(p, stream_));
}

absl::Status CudaForwardOps::SwiGlu(Act gate, Act up, Act out) {
  const ActBuffer& g = act(gate);
  SiluMulParams p;
  p.gate = g.data;
  p.up = act(up).data;
  p.output = act(out).data;
  p.rows = g.rows;
  p.cols = g.cols;
  p.gate_row_stride = g.cols;
  p.up_row_stride = act(up).cols;
  p.output_row_stride = act(out).cols;
  return OpStatus("SwiGlu", LaunchSiluMul(p, stream_));
}

absl::Status CudaForwardOps::AddInPlace(Act x, Act y) {
  ActBuffer& xb = act(x);
  const ActBuffer& yb = act(y);
  if (xb.rows != yb.rows || xb.cols != yb.cols) {
    return absl::InternalError(absl::StrFormat("CUDA op AddInPlace: [%d, %d] += [%d, %d]", xb.rows,
                                               xb.cols, yb.rows, yb.cols));
  }
  AddInPlaceParams p;
  p.x = xb.data;
  p.y = yb.data;
  p.count = xb.rows * xb.cols;
  return OpStatus("AddInPlace", LaunchAddInPlace(p, stream_));
}

absl::Status CudaForwardOps::GatherLogitRows(Act in, Act out) {
  const ActBuffer& i = act(in);
  ActBuffer& o = act(out);
  GatherRowsParams p;
  p.table = i.data;
  p.table_dtype = DType::kF32;
  p.table_rows = i.rows;
  p.indices = logit_rows_;
  p.output = o.data;
  p.rows = o.rows;
  p.cols = o.cols;
  return OpStatus("GatherLogitRows", LaunchGatherRows(p, stream_));
}

absl::Status CudaForwardOps::ReadLogits(Act logits, std::span<float> out) {
  const ActBuffer& l = act(logits);
  const size_t count = static_cast<size_t>(l.rows * l.cols);
  if (out.size() != count) {
    return absl::InternalError(absl::StrFormat(
        "CUDA op ReadLogits: %d host floats for [%d, %d] logits", out.size(), l.rows, l.cols));
  }
  const auto copy = [&]() -> absl::Status {
    CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(out.data(), l.data, count * sizeof(float),
                                         cudaMemcpyDeviceToHost, stream_));
    CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
    return absl::OkStatus();
  };
  return OpStatus("ReadLogits", copy());
}

}  // namespace spqr
