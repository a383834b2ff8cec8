#include "engine/backend/cpu/cpu_forward_ops.h"

#include <algorithm>
#include <cstring>
#include <string>

#include "absl/strings/str_format.h"
#include "engine/backend/cpu/embedding.h"
#include "engine/backend/cpu/linear_bf16.h"
#include "engine/backend/cpu/rms_norm.h"
#include "engine/backend/cpu/rope.h"
#include "engine/backend/cpu/spqr_linear.h"
#include "engine/backend/cpu/swiglu.h"
#include "engine/backend/cpu/worker_pool.h"

namespace spqr::cpu {
namespace {

const char* ActName(Act a) {
  static constexpr const char* kNames[] = {"kX", "kH",    "kProj", "kQ",     "kAttn",  "kK",
                                           "kV", "kGate", "kUp",   "kFinal", "kLogits"};
  return kNames[static_cast<int>(a)];
}

// The ops trust RunLlamaForward's buffer choices; a mismatch is a bug in the caller, reported as
// INTERNAL naming the op instead of reading out of bounds.
absl::Status Mismatch(const char* op, const std::string& what) {
  return absl::InternalError(absl::StrFormat("cpu %s: %s", op, what));
}

}  // namespace

CpuForwardOps::CpuForwardOps(const ModelConfig& config, const SpqrTileMap* tiles, PagedKvPool* pool,
                             const CpuOpsOptions& options)
    : c_(config),
      tiles_(tiles),
      pool_(pool),
      options_(options),
      inv_freq_(ComputeRopeInvFreq(config.head_dim, config.rope_theta, config.rope_scaling)),
      shape_{config.num_attention_heads, config.num_key_value_heads, config.head_dim} {}

absl::Status CpuForwardOps::BeginStep(const StepLayout& step) {
  ids_ = step.token_ids;
  positions_ = step.positions;
  logit_rows_ = step.logit_rows;
  if (positions_.size() != ids_.size()) {
    return Mismatch("BeginStep",
                    absl::StrFormat("%d positions for %d tokens", positions_.size(), ids_.size()));
  }
  seqs_.clear();
  for (const StepSequence& s : step.seqs) {
    seqs_.push_back({s.row_offset, s.num_tokens, s.start_pos, s.block_table.data()});
  }
  const int64_t n = static_cast<int64_t>(ids_.size());
  const int64_t num_logits = static_cast<int64_t>(logit_rows_.size());
  const int64_t q_floats = c_.num_attention_heads * c_.head_dim;
  const int64_t kv_floats = c_.num_key_value_heads * c_.head_dim;
  const struct {
    Act act;
    int64_t rows, cols;
  } sizes[] = {{Act::kX, n, c_.hidden_size},
               {Act::kH, n, c_.hidden_size},
               {Act::kProj, n, c_.hidden_size},
               {Act::kQ, n, q_floats},
               {Act::kAttn, n, q_floats},
               {Act::kK, n, kv_floats},
               {Act::kV, n, kv_floats},
               {Act::kGate, n, c_.intermediate_size},
               {Act::kUp, n, c_.intermediate_size},
               {Act::kFinal, num_logits, c_.hidden_size},
               {Act::kLogits, num_logits, c_.vocab_size}};
  for (const auto& s : sizes) {
    Buffer& b = buf(s.act);
    b.rows = s.rows;
    b.cols = s.cols;
    b.data.resize(static_cast<size_t>(s.rows * s.cols));
  }
  return absl::OkStatus();
}

absl::Status CpuForwardOps::Embed(const TensorView& embed_tokens, Act out) {
  Buffer& o = buf(out);
  if (o.rows != static_cast<int64_t>(ids_.size()) || o.cols != c_.hidden_size) {
    return Mismatch("Embed", absl::StrFormat("%s is not [tokens, hidden]", ActName(out)));
  }
  EmbeddingLookup(embed_tokens, ids_, o.cols, o.data.data());
  return absl::OkStatus();
}

absl::Status CpuForwardOps::RmsNorm(Act in, const TensorView& weight, float eps, Act out) {
  Buffer &i = buf(in), &o = buf(out);
  if (i.rows != o.rows || i.cols != o.cols || weight.numel() != i.cols) {
    return Mismatch("RmsNorm",
                    absl::StrFormat("%s [%d, %d] -> %s [%d, %d] with %d weights", ActName(in),
                                    i.rows, i.cols, ActName(out), o.rows, o.cols, weight.numel()));
  }
  cpu::RmsNorm(i.data.data(), i.rows, i.cols, weight, eps, o.data.data(), options_.num_threads);
  return absl::OkStatus();
}

void CpuForwardOps::Linear(const LinearTensors& l, float* y) {
  const int nt = options_.num_threads;
  if (l.spqr != nullptr && !tiles_->empty()) {
    auto it = tiles_->find(l.spqr.get());
    if (it != tiles_->end()) {
      return SpqrLinearTiled(*it->second, l, packed_, y, nt, options_.isa);
    }
  }
  if (options_.bf16_dot && l.spqr == nullptr && l.weight.dtype == DType::kBF16) {
    return LinearBf16(l, packed_, y, nt);
  }
  cpu::Linear(l, packed_, y, nt);
}

absl::Status CpuForwardOps::Project(Act in, std::span<const Projection> projections) {
  const Buffer& i = buf(in);
  for (const Projection& p : projections) {
    const Buffer& o = buf(p.out);
    if (p.linear == nullptr || p.linear->in_features != i.cols ||
        p.linear->out_features != o.cols || o.rows != i.rows || p.out == in) {
      return Mismatch(
          "Project",
          absl::StrFormat("%s [%d, %d] -> %s [%d, %d] through a %s layer", ActName(in), i.rows,
                          i.cols, ActName(p.out), o.rows, o.cols,
                          p.linear == nullptr ? std::string("null")
                                              : absl::StrFormat("%dx%d", p.linear->out_features,
                                                                p.linear->in_features)));
    }
  }
  PackActivations(i.data.data(), i.rows, i.cols, &packed_);
  for (const Projection& p : projections) Linear(*p.linear, buf(p.out).data.data());
  return absl::OkStatus();
}

absl::Status CpuForwardOps::Rope(Act q, Act k) {
  Buffer &qb = buf(q), &kb = buf(k);
  const int64_t n = static_cast<int64_t>(positions_.size());
  if (qb.rows != n || kb.rows != n || qb.cols != shape_.num_heads * shape_.head_dim ||
      kb.cols != shape_.kv_heads * shape_.head_dim) {
    return Mismatch("Rope", absl::StrFormat("%s/%s are not [tokens, heads * head_dim]", ActName(q),
                                            ActName(k)));
  }
  float* qd = qb.data.data();
  float* kd = kb.data.data();
  const int64_t qc = qb.cols, kc = kb.cols;
  cpu::ParallelForStatic(n > 1 ? options_.num_threads : 1, n, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      ApplyRope(qd + t * qc, shape_.num_heads, kd + t * kc, shape_.kv_heads, shape_.head_dim,
                positions_[t], inv_freq_.data());
    }
  });
  return absl::OkStatus();
}

absl::Status CpuForwardOps::StoreKv(int64_t layer, Act k, Act v) {
  const Buffer &kb = buf(k), &vb = buf(v);
  const int64_t kv_floats = shape_.kv_heads * shape_.head_dim;
  const int64_t n = static_cast<int64_t>(ids_.size());
  if (kb.rows != n || vb.rows != n || kb.cols != kv_floats || vb.cols != kv_floats || layer < 0 ||
      layer >= c_.num_hidden_layers) {
    return Mismatch("StoreKv", absl::StrFormat("layer %d, %s/%s not [tokens, kv_heads * head_dim]",
                                               layer, ActName(k), ActName(v)));
  }
  cpu::StoreKv(kb.data.data(), vb.data.data(), seqs_, shape_, layer, pool_);
  return absl::OkStatus();
}

absl::Status CpuForwardOps::Attention(int64_t layer, Act q, Act out) {
  const Buffer& qb = buf(q);
  Buffer& o = buf(out);
  const int64_t q_floats = shape_.num_heads * shape_.head_dim;
  const int64_t n = static_cast<int64_t>(ids_.size());
  if (qb.rows != n || o.rows != n || qb.cols != q_floats || o.cols != q_floats || q == out ||
      layer < 0 || layer >= c_.num_hidden_layers) {
    return Mismatch("Attention",
                    absl::StrFormat("layer %d, %s -> %s", layer, ActName(q), ActName(out)));
  }
  PagedAttention(qb.data.data(), seqs_, shape_, layer, *pool_, o.data.data(), options_.num_threads);
  return absl::OkStatus();
}

absl::Status CpuForwardOps::SwiGlu(Act gate, Act up, Act out) {
  const Buffer &g = buf(gate), &u = buf(up);
  Buffer& o = buf(out);
  if (g.data.size() != u.data.size() || g.data.size() != o.data.size()) {
    return Mismatch("SwiGlu", absl::StrFormat("%s, %s and %s differ in size", ActName(gate),
                                              ActName(up), ActName(out)));
  }
  cpu::SwiGlu(g.data.data(), u.data.data(), static_cast<int64_t>(g.data.size()), o.data.data(),
              options_.num_threads);
  return absl::OkStatus();
}

absl::Status CpuForwardOps::AddInPlace(Act x, Act y) {
  Buffer& xb = buf(x);
  const Buffer& yb = buf(y);
  if (xb.data.size() != yb.data.size()) {
    return Mismatch("AddInPlace",
                    absl::StrFormat("%s and %s differ in size", ActName(x), ActName(y)));
  }
  float* xd = xb.data.data();
  const float* yd = yb.data.data();
  const size_t n = xb.data.size();
  for (size_t i = 0; i < n; ++i) xd[i] += yd[i];
  return absl::OkStatus();
}

absl::Status CpuForwardOps::GatherLogitRows(Act in, Act out) {
  const Buffer& i = buf(in);
  Buffer& o = buf(out);
  if (o.rows != static_cast<int64_t>(logit_rows_.size()) || o.cols != i.cols || in == out) {
    return Mismatch("GatherLogitRows", absl::StrFormat("%s -> %s", ActName(in), ActName(out)));
  }
  for (size_t r = 0; r < logit_rows_.size(); ++r) {
    const int64_t src = logit_rows_[r];
    if (src < 0 || src >= i.rows) {
      return Mismatch("GatherLogitRows",
                      absl::StrFormat("logit row %d outside [0, %d)", src, i.rows));
    }
    std::copy_n(i.data.begin() + src * i.cols, i.cols, o.data.begin() + r * o.cols);
  }
  return absl::OkStatus();
}

absl::Status CpuForwardOps::ReadLogits(Act logits, std::span<float> out) {
  const Buffer& l = buf(logits);
  if (out.size() != l.data.size()) {
    return Mismatch("ReadLogits", absl::StrFormat("%d floats of %s into %d", l.data.size(),
                                                  ActName(logits), out.size()));
  }
  if (!out.empty()) std::memcpy(out.data(), l.data.data(), out.size() * sizeof(float));
  return absl::OkStatus();
}

}  // namespace spqr::cpu
