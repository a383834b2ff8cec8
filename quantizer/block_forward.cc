#include "quantizer/block_forward.h"

#include <omp.h>

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <span>
#include <string>

#include "engine/backend/cpu/rope.h"
#include "engine/backend/forward/forward_ops.h"
#include "engine/backend/forward/llama_forward.h"
#include "engine/util/half.h"

namespace spqr {
namespace {

using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
// Scratch buffers are 64-byte aligned: Eigen's vectorized reductions (the softmax normalizer)
// peel differently for differently aligned data, so unaligned scratch would make the sums, and
// with them the forward, depend on where malloc put the buffer.

// y [tokens][out] = x [tokens][in] W^T + b, for an fp32 view of a DenseLinear (LayerView).
void DenseProject(const LinearTensors& l, const float* x, int64_t tokens, float* y) {
  Eigen::Map<const RowMat> xm(x, tokens, l.in_features);
  Eigen::Map<const RowMat> wm(l.weight.as<float>(), l.out_features, l.in_features);
  Eigen::Map<RowMat> ym(y, tokens, l.out_features);
  ym.noalias() = xm * wm.transpose();
  if (l.bias) {
    const float* b = l.bias->as<float>();
    for (int64_t t = 0; t < tokens; ++t) {
      for (int64_t o = 0; o < l.out_features; ++o) y[t * l.out_features + o] += b[o];
    }
  }
}

void RmsNormRows(const float* x, int64_t tokens, int64_t hidden, const float* w, double eps,
                 float* out) {
  for (int64_t t = 0; t < tokens; ++t) {
    const float* row = x + t * hidden;
    double ss = 0.0;
    for (int64_t i = 0; i < hidden; ++i) ss += static_cast<double>(row[i]) * row[i];
    const float inv = static_cast<float>(1.0 / std::sqrt(ss / hidden + eps));
    for (int64_t i = 0; i < hidden; ++i) out[t * hidden + i] = row[i] * inv * w[i];
  }
}

// Query rows per score block: a block of rows only multiplies the keys up to its last row, so the
// GEMMs skip all masked (future) keys but those inside the diagonal block.
constexpr int64_t kAttentionRowBlock = 64;

// Causal softmax attention of one query head over its KV head, as GEMMs:
//   S = scale * Q K^T (masked to keys s <= t), P = row softmax(S), O = P V.
// q, out: [tokens] rows of hd floats at stride q_stride; k, v: rows at stride kv_stride.
// `scores` is scratch of min(kAttentionRowBlock, tokens) * tokens floats, 64-byte aligned.
void AttendHead(const float* q, int64_t q_stride, const float* k, const float* v, int64_t kv_stride,
                int64_t tokens, int64_t hd, float scale, float* out, float* scores) {
  using Strided = Eigen::OuterStride<>;
  using ConstRows = Eigen::Map<const RowMat, 0, Strided>;
  const int64_t block = std::min(kAttentionRowBlock, tokens);
  for (int64_t r0 = 0; r0 < tokens; r0 += block) {
    const int64_t rows = std::min(block, tokens - r0), keys = r0 + rows;
    ConstRows qm(q + r0 * q_stride, rows, hd, Strided(q_stride));
    ConstRows km(k, keys, hd, Strided(kv_stride));
    ConstRows vm(v, keys, hd, Strided(kv_stride));
    Eigen::Map<RowMat> s(scores, rows, keys);
    s.noalias() = qm * km.transpose();
    for (int64_t i = 0; i < rows; ++i) {
      const int64_t visible = r0 + i + 1;  // keys 0..t
      float* row = scores + i * keys;
      Eigen::Map<Eigen::ArrayXf> p(row, visible);
      p *= scale;
      p = (p - p.maxCoeff()).exp();
      // The normalizer in double, as the scalar implementation had it.
      p *= static_cast<float>(1.0 / p.cast<double>().sum());
      std::fill(row + visible, row + keys, 0.0f);
    }
    Eigen::Map<RowMat, 0, Strided> om(out + r0 * q_stride, rows, hd, Strided(q_stride));
    om.noalias() = s * vm;
  }
}

// fp32 views of a DenseBlock in the engine's weight structs, so that RunLlamaLayer can name its
// tensors; BlockOps reads them back as fp32. Built per call: the quantizer replaces a DenseLinear's
// weight vector after quantizing it, which would leave views kept in the block dangling.
TensorView F32View(const std::vector<float>& v, std::vector<int64_t> shape) {
  TensorView t;
  t.dtype = DType::kF32;
  t.shape = std::move(shape);
  t.data = v.data();
  t.nbytes = v.size() * sizeof(float);
  return t;
}

LinearTensors LinearView(const DenseLinear& l) {
  LinearTensors t;
  t.weight = F32View(l.weight, {l.out_features, l.in_features});
  if (!l.bias.empty()) t.bias = F32View(l.bias, {l.out_features});
  t.out_features = l.out_features;
  t.in_features = l.in_features;
  return t;
}

DecoderLayerWeights LayerView(const DenseBlock& b) {
  DecoderLayerWeights l;
  const int64_t hidden = static_cast<int64_t>(b.input_norm.size());
  l.input_layernorm = F32View(b.input_norm, {hidden});
  l.post_attention_layernorm = F32View(b.post_norm, {hidden});
  LinearTensors* dst[7] = {&l.q_proj,    &l.k_proj,  &l.v_proj,   &l.o_proj,
                           &l.gate_proj, &l.up_proj, &l.down_proj};
  for (int i = 0; i < 7; ++i) *dst[i] = LinearView(b.linears[i]);
  return l;
}

// The ops of one decoder block over one whole sequence (positions 0..tokens-1) in the
// quantizer's arithmetic: Eigen GEMMs on fp32 weights, RMSNorm summed in double with the config's
// eps, causal attention as per-head GEMMs over the step's own K/V (no KV pool: the whole sequence
// is in the step), Eigen's vectorized SiLU. Project feeds its input to the Hessian hook of its
// projections first. Only the per-layer ops run here (RunLlamaLayer); the step-level ones
// (BeginStep, Embed, GatherLogitRows, ReadLogits) are refused.
class BlockOps final : public ForwardOps {
 public:
  // `buffers[a]` is the [tokens, width] fp32 buffer of Act a (kFinal and kLogits unused).
  BlockOps(const ModelConfig& c, const DecoderLayerWeights& layer, const float* inv_freq,
           int64_t tokens, float* const* buffers, float* scores, int64_t score_floats,
           const BlockHessians* hessians, int threads)
      : c_(c),
        layer_(layer),
        inv_freq_(inv_freq),
        tokens_(tokens),
        buffers_(buffers),
        scores_(scores),
        score_floats_(score_floats),
        hessians_(hessians),
        threads_(threads) {}

  absl::Status BeginStep(const StepLayout&) override { return StepLevel("BeginStep"); }
  absl::Status Embed(const TensorView&, Act) override { return StepLevel("Embed"); }
  absl::Status GatherLogitRows(Act, Act) override { return StepLevel("GatherLogitRows"); }
  absl::Status ReadLogits(Act, std::span<float>) override { return StepLevel("ReadLogits"); }

  absl::Status RmsNorm(Act in, const TensorView& weight, float eps, Act out) override {
    // The loop passes eps as float; the quantizer has always normalized with the config's double
    // value (which that float rounds), and keeps doing so.
    if (eps != static_cast<float>(c_.rms_norm_eps) || weight.dtype != DType::kF32) {
      return absl::InternalError("block forward RmsNorm: not the config's eps or not fp32");
    }
    RmsNormRows(buf(in), tokens_, c_.hidden_size, weight.as<float>(), c_.rms_norm_eps, buf(out));
    return absl::OkStatus();
  }

  absl::Status Project(Act in, std::span<const Projection> projections) override {
    if (projections.empty()) return absl::OkStatus();
    // Each input is accumulated once, before its projections, into the Hessian of its group.
    const LinearTensors* first = projections[0].linear;
    const int hook = first == &layer_.q_proj      ? 0
                     : first == &layer_.o_proj    ? 1
                     : first == &layer_.gate_proj ? 2
                     : first == &layer_.down_proj ? 3
                                                  : -1;
    if (hessians_ != nullptr && hook >= 0 && hessians_->captures[hook] != nullptr) {
      const float* x = buf(in);
      hessians_->captures[hook]->assign(x, x + tokens_ * first->in_features);
    } else if (hessians_ != nullptr && hook >= 0 && hessians_->inputs[hook] != nullptr) {
      hessians_->inputs[hook]->AddBatch(buf(in), tokens_);
    }
    for (const Projection& p : projections) {
      if (p.linear->weight.dtype != DType::kF32) {
        return absl::InternalError("block forward Project: weights are not an fp32 view");
      }
      DenseProject(*p.linear, buf(in), tokens_, buf(p.out));
    }
    return absl::OkStatus();
  }

  absl::Status Rope(Act q, Act k) override {
    const int64_t heads = c_.num_attention_heads, kv = c_.num_key_value_heads, hd = c_.head_dim;
    float *qd = buf(q), *kd = buf(k);
    for (int64_t t = 0; t < tokens_; ++t) {
      cpu::ApplyRope(qd + t * heads * hd, heads, kd + t * kv * hd, kv, hd, t, inv_freq_);
    }
    return absl::OkStatus();
  }

  // The whole sequence's keys and values are the step's own k/v rows: attention reads them there.
  absl::Status StoreKv(int64_t, Act k, Act v) override {
    k_ = buf(k);
    v_ = buf(v);
    return absl::OkStatus();
  }

  absl::Status Attention(int64_t, Act q, Act out) override {
    if (k_ == nullptr) return absl::InternalError("block forward Attention before StoreKv");
    const int64_t heads = c_.num_attention_heads, kv = c_.num_key_value_heads, hd = c_.head_dim;
    const int64_t group = heads / kv;
    const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
    const float *qd = buf(q), *k = k_, *v = v_;
    float* attn = buf(out);
    // Heads are independent; each thread keeps one score buffer for all the heads it takes.
#pragma omp parallel num_threads(threads_)
    {
      float* scores = scores_ + score_floats_ * omp_get_thread_num();
#pragma omp for schedule(static)
      for (int64_t h = 0; h < heads; ++h) {
        const int64_t kvh = h / group;
        AttendHead(qd + h * hd, heads * hd, k + kvh * hd, v + kvh * hd, kv * hd, tokens_, hd, scale,
                   attn + h * hd, scores);
      }
    }
    return absl::OkStatus();
  }

  absl::Status SwiGlu(Act gate, Act up, Act out) override {
    // SiLU(gate) * up, with Eigen's vectorized exp.
    const int64_t n = tokens_ * c_.intermediate_size;
    Eigen::Map<const Eigen::ArrayXf> g(buf(gate), n);
    Eigen::Map<const Eigen::ArrayXf> u(buf(up), n);
    Eigen::Map<Eigen::ArrayXf> o(buf(out), n);
    o = g / (1.0f + (-g).exp()) * u;
    return absl::OkStatus();
  }

  absl::Status AddInPlace(Act x, Act y) override {
    float* xd = buf(x);
    const float* yd = buf(y);
    for (int64_t i = 0; i < tokens_ * c_.hidden_size; ++i) xd[i] += yd[i];
    return absl::OkStatus();
  }

 private:
  float* buf(Act a) const { return buffers_[static_cast<int>(a)]; }
  static absl::Status StepLevel(const char* op) {
    return absl::FailedPreconditionError(std::string("block forward: ") + op +
                                         " is a step-level op; only RunLlamaLayer runs here");
  }

  const ModelConfig& c_;
  const DecoderLayerWeights& layer_;
  const float* const inv_freq_;
  const int64_t tokens_;
  float* const* const buffers_;
  float* const scores_;
  const int64_t score_floats_;
  const BlockHessians* const hessians_;
  const int threads_;
  const float* k_ = nullptr;
  const float* v_ = nullptr;
};

}  // namespace

std::vector<float> TensorToF32(const TensorView& t) {
  std::vector<float> out(static_cast<size_t>(t.numel()));
  for (int64_t i = 0; i < t.numel(); ++i) {
    switch (t.dtype) {
      case DType::kF32:
        out[i] = t.as<float>()[i];
        break;
      case DType::kF16:
        out[i] = F16ToF32(t.as<uint16_t>()[i]);
        break;
      default:  // BF16 (the binder admits only these three)
        out[i] = Bf16ToF32(t.as<uint16_t>()[i]);
        break;
    }
  }
  return out;
}

DenseBlock LoadDenseBlock(const DecoderLayerWeights& layer) {
  DenseBlock b;
  b.input_norm = TensorToF32(layer.input_layernorm);
  b.post_norm = TensorToF32(layer.post_attention_layernorm);
  const LinearTensors* src[7] = {&layer.q_proj,    &layer.k_proj,  &layer.v_proj,   &layer.o_proj,
                                 &layer.gate_proj, &layer.up_proj, &layer.down_proj};
  for (int i = 0; i < 7; ++i) {
    b.linears[i].weight = TensorToF32(src[i]->weight);
    if (src[i]->bias) b.linears[i].bias = TensorToF32(*src[i]->bias);
    b.linears[i].out_features = src[i]->out_features;
    b.linears[i].in_features = src[i]->in_features;
  }
  return b;
}

void BlockForward(const DenseBlock& block, const ModelConfig& config, const float* inv_freq,
                  const float* x, int64_t tokens, float* out, const BlockHessians* hessians,
                  int threads) {
  BlockForwardScratch scratch;
  BlockForward(block, config, inv_freq, x, tokens, out, hessians, threads, &scratch);
}

void BlockForward(const DenseBlock& b, const ModelConfig& c, const float* inv_freq, const float* x,
                  int64_t tokens, float* out, const BlockHessians* hessians, int threads,
                  BlockForwardScratch* scratch) {
  const int64_t hidden = c.hidden_size, heads = c.num_attention_heads, kv = c.num_key_value_heads;
  const int64_t hd = c.head_dim, inter = c.intermediate_size;
  if (threads <= 0) threads = omp_get_max_threads();
  // Eigen's GEMMs run on omp_get_max_threads() threads when called outside a parallel region, so
  // the caller's thread count is set for this call (and restored): with threads == 1 every
  // product here is serial, which makes the result independent of the caller's OpenMP settings
  // (EvaluatePerplexity runs windows in parallel, each with threads == 1).
  const int saved_max_threads = omp_get_max_threads();
  omp_set_num_threads(threads);
  // Working memory, 64-byte aligned pieces of the scratch storage (see the note on alignment at
  // the top for why): xn, q, k, v, attn, proj, gate, up, one score block per thread. The residual
  // stream (Act::kX) is `out` itself: x is copied there and the layer adds to it in place.
  const int64_t score_floats = std::min(kAttentionRowBlock, tokens) * tokens;
  const int64_t sizes[9] = {tokens * hidden,  tokens * heads * hd, tokens * kv * hd,
                            tokens * kv * hd, tokens * heads * hd, tokens * hidden,
                            tokens * inter,   tokens * inter,      score_floats * threads};
  constexpr int64_t kAlignFloats = 16;  // 64 bytes
  int64_t total = kAlignFloats;
  for (int64_t n : sizes) total += (n + kAlignFloats - 1) / kAlignFloats * kAlignFloats;
  if (scratch->storage.size() < static_cast<size_t>(total)) {
    scratch->storage.resize(static_cast<size_t>(total));
  }
  float* pieces[9];
  {
    const uintptr_t base = reinterpret_cast<uintptr_t>(scratch->storage.data());
    float* next = scratch->storage.data() + ((64 - base % 64) % 64) / sizeof(float);
    for (int i = 0; i < 9; ++i) {
      pieces[i] = next;
      next += (sizes[i] + kAlignFloats - 1) / kAlignFloats * kAlignFloats;
    }
  }
  float* buffers[static_cast<int>(Act::kLogits) + 1] = {};
  buffers[static_cast<int>(Act::kX)] = out;
  const Act acts[8] = {Act::kH,    Act::kQ,    Act::kK,    Act::kV,
                       Act::kAttn, Act::kProj, Act::kGate, Act::kUp};
  for (int i = 0; i < 8; ++i) buffers[static_cast<int>(acts[i])] = pieces[i];
  std::copy_n(x, tokens * hidden, out);
  // The layer loop is the engine's (RunLlamaLayer); these ops never fail on the views built here,
  // so an error is a bug in this file, not bad input.
  const DecoderLayerWeights layer = LayerView(b);
  BlockOps ops(c, layer, inv_freq, tokens, buffers, pieces[8], score_floats, hessians, threads);
  const absl::Status st =
      RunLlamaLayer(layer, /*index=*/0, static_cast<float>(c.rms_norm_eps), ops);
  if (!st.ok()) {
    std::fprintf(stderr, "BlockForward: %s\n", std::string(st.message()).c_str());
    std::abort();
  }
  omp_set_num_threads(saved_max_threads);
}

}  // namespace spqr
