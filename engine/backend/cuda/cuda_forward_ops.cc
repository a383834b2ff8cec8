#include "engine/backend/cuda/cuda_forward_ops.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "engine/backend/cuda/add_rows.cuh"
#include "engine/backend/cuda/cast_f32.cuh"
#include "engine/backend/cuda/cuda_status.h"
#include "engine/backend/cuda/embedding.cuh"
#include "engine/backend/cuda/gather_rows.cuh"
#include "engine/backend/cuda/rms_norm.cuh"
#include "engine/backend/cuda/rope.cuh"
#include "engine/backend/cuda/silu_mul.cuh"
#include "engine/backend/cuda/spqr_gpu_linear.cuh"
#include "engine/util/status_macros.h"

namespace spqr {
namespace {

// Prefixes the op to an error, so that a failure says which step of the forward broke.
absl::Status InOp(const char* op, const absl::Status& s) {
  if (s.ok()) return s;
  return absl::Status(s.code(), absl::StrCat("CUDA backend ", op, ": ", s.message()));
}

absl::Status CudaInOp(const char* op, cudaError_t e, const char* expr) {
  return InOp(op, CudaErrorToStatus(e, expr, __FILE__, __LINE__));
}

// Grows `buffer` to hold at least `bytes` (by a quarter more, so that slowly growing steps do not
// reallocate every time). The old contents are not kept.
absl::Status Reserve(DeviceBuffer& buffer, size_t bytes) {
  if (buffer.size() >= bytes) return absl::OkStatus();
  buffer = DeviceBuffer();  // free first: the two need not fit together
  ASSIGN_OR_RETURN(buffer, DeviceBuffer::Allocate(bytes + bytes / 4));
  return absl::OkStatus();
}

size_t AlignUp(size_t n) { return (n + 255) / 256 * 256; }

}  // namespace

PinnedBuffer::~PinnedBuffer() {
  if (data_ != nullptr) cudaFreeHost(data_);
}

absl::Status PinnedBuffer::Reserve(size_t bytes) {
  if (size_ >= bytes) return absl::OkStatus();
  if (data_ != nullptr) cudaFreeHost(data_);
  data_ = nullptr;
  size_ = 0;
  const size_t want = bytes + bytes / 4;
  CUDA_RETURN_IF_ERROR(cudaMallocHost(&data_, want));
  size_ = want;
  return absl::OkStatus();
}

CudaForwardOps::CudaForwardOps(const ModelConfig& config, const CudaWeights& weights,
                               cudaStream_t stream, const CublasHandle& cublas,
                               DeviceBuffer inv_freq)
    : c_(config),
      weights_(weights),
      stream_(stream),
      cublas_(cublas),
      inv_freq_(std::move(inv_freq)) {}

CudaForwardOps::~CudaForwardOps() {
  if (meta_sent_ != nullptr) cudaEventDestroy(meta_sent_);
}

int64_t CudaForwardOps::scratch_bytes() const {
  int64_t bytes = static_cast<int64_t>(meta_.size() + cast_.size() + spqr_workspace_.size());
  for (const DeviceBuffer& b : acts_) bytes += static_cast<int64_t>(b.size());
  return bytes;
}

int64_t CudaForwardOps::Cols(Act a) const {
  switch (a) {
    case Act::kX:
    case Act::kH:
    case Act::kProj:
    case Act::kFinal:
      return c_.hidden_size;
    case Act::kQ:
    case Act::kAttn:
      return c_.num_attention_heads * c_.head_dim;
    case Act::kK:
    case Act::kV:
      return c_.num_key_value_heads * c_.head_dim;
    case Act::kGate:
    case Act::kUp:
      return c_.intermediate_size;
    case Act::kLogits:
      return c_.vocab_size;
  }
  return 0;
}

int64_t CudaForwardOps::Rows(Act a) const {
  return a == Act::kFinal || a == Act::kLogits ? logit_rows_ : rows_;
}

absl::Status CudaForwardOps::BeginStep(const StepLayout& step) {
  constexpr char kOp[] = "BeginStep";
  rows_ = static_cast<int64_t>(step.token_ids.size());
  logit_rows_ = static_cast<int64_t>(step.logit_rows.size());
  num_seqs_ = static_cast<int32_t>(step.seqs.size());
  for (int i = 0; i < kNumActs; ++i) {
    const Act a = static_cast<Act>(i);
    RETURN_IF_ERROR(
        InOp(kOp, Reserve(acts_[i], static_cast<size_t>(Rows(a) * Cols(a)) * sizeof(float))));
  }

  // Layout of the metadata: each array 256-byte aligned inside one buffer.
  size_t table_entries = 0;
  for (const StepSequence& s : step.seqs) table_entries += s.block_table.size();
  const size_t ids_off = 0;
  const size_t pos_off = ids_off + AlignUp(rows_ * sizeof(int32_t));
  const size_t seqs_off = pos_off + AlignUp(rows_ * sizeof(int32_t));
  const size_t tables_off = seqs_off + AlignUp(num_seqs_ * sizeof(AttentionSeqDevice));
  const size_t logit_off = tables_off + AlignUp(table_entries * sizeof(int32_t));
  const size_t total = logit_off + AlignUp(std::max<int64_t>(logit_rows_, 1) * sizeof(int32_t));

  // The staging buffer may still be read by the previous step's copy.
  if (meta_sent_ == nullptr) {
    const cudaError_t e = cudaEventCreateWithFlags(&meta_sent_, cudaEventDisableTiming);
    if (e != cudaSuccess) return CudaInOp(kOp, e, "cudaEventCreateWithFlags");
  } else if (const cudaError_t e = cudaEventSynchronize(meta_sent_); e != cudaSuccess) {
    return CudaInOp(kOp, e, "cudaEventSynchronize(metadata copy)");
  }
  RETURN_IF_ERROR(InOp(kOp, meta_staging_.Reserve(total)));
  RETURN_IF_ERROR(InOp(kOp, Reserve(meta_, total)));
  char* h = static_cast<char*>(meta_staging_.data());
  auto* ids = reinterpret_cast<int32_t*>(h + ids_off);
  auto* pos = reinterpret_cast<int32_t*>(h + pos_off);
  auto* seqs = reinterpret_cast<AttentionSeqDevice*>(h + seqs_off);
  auto* tables = reinterpret_cast<int32_t*>(h + tables_off);
  auto* logit_rows = reinterpret_cast<int32_t*>(h + logit_off);
  for (int64_t r = 0; r < rows_; ++r) {
    ids[r] = step.token_ids[r];
    pos[r] = static_cast<int32_t>(step.positions[r]);
  }
  max_positions_ = 0;
  int32_t table_offset = 0;
  for (int32_t i = 0; i < num_seqs_; ++i) {
    const StepSequence& s = step.seqs[i];
    seqs[i] = {static_cast<int32_t>(s.row_offset), static_cast<int32_t>(s.num_tokens),
               static_cast<int32_t>(s.start_pos), table_offset};
    std::copy(s.block_table.begin(), s.block_table.end(), tables + table_offset);
    table_offset += static_cast<int32_t>(s.block_table.size());
    max_positions_ = std::max(max_positions_, static_cast<int32_t>(s.start_pos + s.num_tokens));
  }
  for (int64_t i = 0; i < logit_rows_; ++i)
    logit_rows[i] = static_cast<int32_t>(step.logit_rows[i]);

  cudaError_t e = cudaMemcpyAsync(meta_.data(), h, total, cudaMemcpyHostToDevice, stream_);
  if (e != cudaSuccess) return CudaInOp(kOp, e, "cudaMemcpyAsync(step metadata)");
  e = cudaEventRecord(meta_sent_, stream_);
  if (e != cudaSuccess) return CudaInOp(kOp, e, "cudaEventRecord(metadata copy)");
  char* d = static_cast<char*>(meta_.data());
  d_ids_ = reinterpret_cast<const int32_t*>(d + ids_off);
  d_positions_ = reinterpret_cast<const int32_t*>(d + pos_off);
  d_seqs_ = reinterpret_cast<const AttentionSeqDevice*>(d + seqs_off);
  d_block_tables_ = reinterpret_cast<const int32_t*>(d + tables_off);
  d_logit_rows_ = reinterpret_cast<const int32_t*>(d + logit_off);
  return absl::OkStatus();
}

absl::Status CudaForwardOps::Embed(const TensorView& embed_tokens, Act out) {
  const DeviceTensor* table = weights_.Table(embed_tokens);
  if (table == nullptr) {
    return absl::InternalError(
        absl::StrCat("CUDA backend Embed: ", embed_tokens.name, " was not uploaded"));
  }
  EmbeddingParams p;
  p.table = table->buffer.data();
  p.table_dtype = table->dtype;
  p.ids = d_ids_;
  p.output = Data(out);
  p.rows = Rows(out);
  p.hidden = Cols(out);
  return InOp("Embed", LaunchEmbedding(p, stream_));
}

absl::Status CudaForwardOps::RmsNorm(Act in, const TensorView& weight, float eps, Act out) {
  const DeviceTensor* w = weights_.Table(weight);
  if (w == nullptr) {
    return absl::InternalError(
        absl::StrCat("CUDA backend RmsNorm: ", weight.name, " was not uploaded"));
  }
  RmsNormParams p;
  p.input = Data(in);
  p.weight = w->buffer.data();
  p.weight_dtype = w->dtype;
  p.output = Data(out);
  p.rows = Rows(in);
  p.dim = Cols(in);
  p.input_row_stride = p.dim;
  p.output_row_stride = p.dim;
  p.eps = eps;
  return InOp("RmsNorm", LaunchRmsNorm(p, stream_));
}

absl::StatusOr<const void*> CudaForwardOps::CastInput(Act in, DType dtype) {
  const int64_t count = Rows(in) * Cols(in);
  if (cast_dtype_ != dtype || cast_of_ != in) {
    RETURN_IF_ERROR(Reserve(cast_, static_cast<size_t>(count) * 2));
    CastF32Params p;
    p.input = Data(in);
    p.output = cast_.data();
    p.output_dtype = dtype;
    p.count = count;
    RETURN_IF_ERROR(LaunchCastF32(p, stream_));
    cast_dtype_ = dtype;
    cast_of_ = in;
  }
  return static_cast<const void*>(cast_.data());
}

absl::Status CudaForwardOps::ProjectOne(Act in, const Projection& proj) {
  const DeviceLinear* l = weights_.Linear(*proj.linear);
  if (l == nullptr) return absl::InternalError("a projection that was not uploaded");
  const int64_t m = Rows(in);
  if (Cols(in) != l->in_features || Cols(proj.out) != l->out_features) {
    return absl::InternalError(absl::StrCat("projection ", l->out_features, "x", l->in_features,
                                            " does not fit activations of ", Cols(in), " -> ",
                                            Cols(proj.out), " columns"));
  }
  if (l->spqr.has_value()) {
    SpqrGpuLinearParams p;
    p.layer = l->spqr->view();
    p.x = Data(in);
    p.y = Data(proj.out);
    p.batch = m;
    p.cublas = &cublas_;
    const int64_t ws = SpqrGpuLinearWorkspaceBytes(p.layer, m);
    RETURN_IF_ERROR(Reserve(spqr_workspace_, static_cast<size_t>(std::max<int64_t>(ws, 1))));
    p.workspace = spqr_workspace_.data();
    p.workspace_bytes = static_cast<int64_t>(spqr_workspace_.size());
    RETURN_IF_ERROR(LaunchSpqrGpuLinear(p, stream_));
  } else {
    ASSIGN_OR_RETURN(const void* x, CastInput(in, l->dense->dtype));
    DenseGemmParams p;
    p.x = x;
    p.w = l->dense->buffer.data();
    p.y = Data(proj.out);
    p.dtype = l->dense->dtype;
    p.m = m;
    p.n = l->out_features;
    p.k = l->in_features;
    RETURN_IF_ERROR(DenseGemm(cublas_, p));
  }
  if (l->bias.size() > 0) {
    AddRowsParams p;
    p.x = Data(proj.out);
    p.y = l->bias.as<float>();
    p.rows = m;
    p.cols = l->out_features;
    p.x_row_stride = l->out_features;
    p.y_row_stride = 0;
    RETURN_IF_ERROR(LaunchAddRows(p, stream_));
  }
  return absl::OkStatus();
}

absl::Status CudaForwardOps::Project(Act in, std::span<const Projection> projections) {
  cast_dtype_ = DType::kF32;  // `in` changed since the last Project
  for (const Projection& p : projections) {
    if (p.out == in) return absl::InternalError("CUDA backend Project: output aliases input");
    RETURN_IF_ERROR(InOp("Project", ProjectOne(in, p)));
  }
  return absl::OkStatus();
}

absl::Status CudaForwardOps::Rope(Act q, Act k) {
  RopeParams p;
  p.q = Data(q);
  p.k = Data(k);
  p.positions = d_positions_;
  p.inv_freq = inv_freq_.as<float>();
  p.num_tokens = Rows(q);
  p.num_q_heads = static_cast<int32_t>(c_.num_attention_heads);
  p.num_kv_heads = static_cast<int32_t>(c_.num_key_value_heads);
  p.head_dim = static_cast<int32_t>(c_.head_dim);
  p.q_token_stride = Cols(q);
  p.k_token_stride = Cols(k);
  return InOp("Rope", LaunchRope(p, stream_));
}

absl::Status CudaForwardOps::StoreKv(int64_t layer, Act k, Act v) {
  StoreKvParams p;
  p.k = Data(k);
  p.v = Data(v);
  p.seqs = d_seqs_;
  p.block_tables = d_block_tables_;
  p.num_seqs = num_seqs_;
  p.rows = static_cast<int32_t>(Rows(k));
  p.layer = static_cast<int32_t>(layer);
  p.pool = pool_;
  return InOp("StoreKv", LaunchStoreKv(p, stream_));
}

absl::Status CudaForwardOps::Attention(int64_t layer, Act q, Act out) {
  PagedAttentionParams p;
  p.q = Data(q);
  p.out = Data(out);
  p.seqs = d_seqs_;
  p.block_tables = d_block_tables_;
  p.num_seqs = num_seqs_;
  p.rows = static_cast<int32_t>(Rows(q));
  p.max_positions = max_positions_;
  p.num_heads = static_cast<int32_t>(c_.num_attention_heads);
  p.layer = static_cast<int32_t>(layer);
  p.pool = pool_;
  return InOp("Attention", LaunchPagedAttention(p, stream_));
}

absl::Status CudaForwardOps::SwiGlu(Act gate, Act up, Act out) {
  SiluMulParams p;
  p.gate = Data(gate);
  p.up = Data(up);
  p.output = Data(out);
  p.rows = Rows(gate);
  p.cols = Cols(gate);
  p.gate_row_stride = p.cols;
  p.up_row_stride = p.cols;
  p.output_row_stride = p.cols;
  return InOp("SwiGlu", LaunchSiluMul(p, stream_));
}

absl::Status CudaForwardOps::AddInPlace(Act x, Act y) {
  AddRowsParams p;
  p.x = Data(x);
  p.y = Data(y);
  p.rows = Rows(x);
  p.cols = Cols(x);
  p.x_row_stride = p.cols;
  p.y_row_stride = p.cols;
  return InOp("AddInPlace", LaunchAddRows(p, stream_));
}

absl::Status CudaForwardOps::GatherLogitRows(Act in, Act out) {
  GatherRowsParams p;
  p.input = Data(in);
  p.rows = d_logit_rows_;
  p.output = Data(out);
  p.in_rows = Rows(in);
  p.out_rows = Rows(out);
  p.cols = Cols(in);
  return InOp("GatherLogitRows", LaunchGatherRows(p, stream_));
}

absl::Status CudaForwardOps::ReadLogits(Act logits, std::span<float> out) {
  constexpr char kOp[] = "ReadLogits";
  const size_t count = static_cast<size_t>(Rows(logits) * Cols(logits));
  if (out.size() != count) {
    return absl::InternalError(absl::StrCat("CUDA backend ReadLogits: ", out.size(),
                                            " floats of output for ", count, " logits"));
  }
  if (count == 0) return absl::OkStatus();
  RETURN_IF_ERROR(InOp(kOp, logits_staging_.Reserve(count * sizeof(float))));
  cudaError_t e = cudaMemcpyAsync(logits_staging_.data(), Data(logits), count * sizeof(float),
                                  cudaMemcpyDeviceToHost, stream_);
  if (e != cudaSuccess) return CudaInOp(kOp, e, "cudaMemcpyAsync(logits)");
  e = cudaStreamSynchronize(stream_);
  if (e != cudaSuccess) return CudaInOp(kOp, e, "cudaStreamSynchronize");
  std::memcpy(out.data(), logits_staging_.data(), count * sizeof(float));
  return absl::OkStatus();
}

}  // namespace spqr
