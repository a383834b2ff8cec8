#include "quantizer/block_forward.h"

#include <omp.h>

#include <Eigen/Core>
#include <algorithm>
#include <cmath>

#include "engine/backend/cpu/rope.h"
#include "engine/util/half.h"

namespace spqr {
namespace {

using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
// Scratch with Eigen's alignment: a vectorized reduction (the softmax normalizer) peels
// differently for differently aligned data, so unaligned scratch would make the sums, and with
// them the forward, depend on where malloc put the buffer.
using AlignedFloats = std::vector<float, Eigen::aligned_allocator<float>>;

// y [tokens][out] = x [tokens][in] W^T + b.
void Project(const DenseLinear& l, const float* x, int64_t tokens, float* y) {
  Eigen::Map<const RowMat> xm(x, tokens, l.in_features);
  Eigen::Map<const RowMat> wm(l.weight.data(), l.out_features, l.in_features);
  Eigen::Map<RowMat> ym(y, tokens, l.out_features);
  ym.noalias() = xm * wm.transpose();
  if (!l.bias.empty()) {
    for (int64_t t = 0; t < tokens; ++t) {
      for (int64_t o = 0; o < l.out_features; ++o) y[t * l.out_features + o] += l.bias[o];
    }
  }
}

void RmsNormRows(const float* x, int64_t tokens, int64_t hidden, const std::vector<float>& w,
                 double eps, float* out) {
  for (int64_t t = 0; t < tokens; ++t) {
    const float* row = x + t * hidden;
    double ss = 0.0;
    for (int64_t i = 0; i < hidden; ++i) ss += static_cast<double>(row[i]) * row[i];
    const float inv = static_cast<float>(1.0 / std::sqrt(ss / hidden + eps));
    for (int64_t i = 0; i < hidden; ++i) out[t * hidden + i] = row[i] * inv * w[i];
  }
}

void Accumulate(const BlockHessians* h, int which, const float* x, int64_t tokens) {
  if (h != nullptr && h->inputs[which] != nullptr) h->inputs[which]->AddBatch(x, tokens);
}

// Query rows per score block: a block of rows only multiplies the keys up to its last row, so the
// GEMMs skip all masked (future) keys but those inside the diagonal block.
constexpr int64_t kAttentionRowBlock = 64;

// Causal softmax attention of one query head over its KV head, as GEMMs:
//   S = scale * Q K^T (masked to keys s <= t), P = row softmax(S), O = P V.
// q, out: [tokens] rows of hd floats at stride q_stride; k, v: rows at stride kv_stride.
// `scores` is scratch (grown as needed).
void AttendHead(const float* q, int64_t q_stride, const float* k, const float* v, int64_t kv_stride,
                int64_t tokens, int64_t hd, float scale, float* out, AlignedFloats* scores) {
  using Strided = Eigen::OuterStride<>;
  using ConstRows = Eigen::Map<const RowMat, 0, Strided>;
  const int64_t block = std::min(kAttentionRowBlock, tokens);
  if (scores->size() < static_cast<size_t>(block * tokens)) {
    scores->resize(static_cast<size_t>(block * tokens));
  }
  for (int64_t r0 = 0; r0 < tokens; r0 += block) {
    const int64_t rows = std::min(block, tokens - r0), keys = r0 + rows;
    ConstRows qm(q + r0 * q_stride, rows, hd, Strided(q_stride));
    ConstRows km(k, keys, hd, Strided(kv_stride));
    ConstRows vm(v, keys, hd, Strided(kv_stride));
    Eigen::Map<RowMat> s(scores->data(), rows, keys);
    s.noalias() = qm * km.transpose();
    for (int64_t i = 0; i < rows; ++i) {
      const int64_t visible = r0 + i + 1;  // keys 0..t
      float* row = scores->data() + i * keys;
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

void BlockForward(const DenseBlock& b, const ModelConfig& c, const float* inv_freq, const float* x,
                  int64_t tokens, float* out, const BlockHessians* hessians, int threads) {
  const int64_t hidden = c.hidden_size, heads = c.num_attention_heads, kv = c.num_key_value_heads;
  const int64_t hd = c.head_dim, inter = c.intermediate_size;
  if (threads <= 0) threads = omp_get_max_threads();
  // Eigen's GEMMs run on omp_get_max_threads() threads when called outside a parallel region, so
  // the caller's thread count is set for this call (and restored): with threads == 1 every
  // product here is serial, which makes the result independent of the caller's OpenMP settings
  // (EvaluatePerplexity runs windows in parallel, each with threads == 1).
  const int saved_max_threads = omp_get_max_threads();
  omp_set_num_threads(threads);
  AlignedFloats xn(static_cast<size_t>(tokens * hidden));
  AlignedFloats q(static_cast<size_t>(tokens * heads * hd));
  AlignedFloats k(static_cast<size_t>(tokens * kv * hd)), v(k.size());
  AlignedFloats attn(q.size());
  // Attention half.
  RmsNormRows(x, tokens, hidden, b.input_norm, c.rms_norm_eps, xn.data());
  Accumulate(hessians, 0, xn.data(), tokens);
  Project(b.linears[0], xn.data(), tokens, q.data());
  Project(b.linears[1], xn.data(), tokens, k.data());
  Project(b.linears[2], xn.data(), tokens, v.data());
  for (int64_t t = 0; t < tokens; ++t) {
    cpu::ApplyRope(q.data() + t * heads * hd, heads, k.data() + t * kv * hd, kv, hd, t, inv_freq);
  }
  const int64_t group = heads / kv;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  // Heads are independent; each thread keeps one score buffer for all the heads it takes.
#pragma omp parallel num_threads(threads)
  {
    AlignedFloats scores;
#pragma omp for schedule(static)
    for (int64_t h = 0; h < heads; ++h) {
      const int64_t kvh = h / group;
      AttendHead(q.data() + h * hd, heads * hd, k.data() + kvh * hd, v.data() + kvh * hd, kv * hd,
                 tokens, hd, scale, attn.data() + h * hd, &scores);
    }
  }
  Accumulate(hessians, 1, attn.data(), tokens);
  AlignedFloats proj(static_cast<size_t>(tokens * hidden));
  Project(b.linears[3], attn.data(), tokens, proj.data());
  AlignedFloats h1(static_cast<size_t>(tokens * hidden));
  for (int64_t i = 0; i < tokens * hidden; ++i) h1[i] = x[i] + proj[i];
  // MLP half.
  RmsNormRows(h1.data(), tokens, hidden, b.post_norm, c.rms_norm_eps, xn.data());
  Accumulate(hessians, 2, xn.data(), tokens);
  AlignedFloats gate(static_cast<size_t>(tokens * inter)), up(gate.size());
  Project(b.linears[4], xn.data(), tokens, gate.data());
  Project(b.linears[5], xn.data(), tokens, up.data());
  {
    // SiLU(gate) * up, with Eigen's vectorized exp.
    Eigen::Map<Eigen::ArrayXf> g(gate.data(), tokens * inter);
    Eigen::Map<const Eigen::ArrayXf> u(up.data(), tokens * inter);
    g = g / (1.0f + (-g).exp()) * u;
  }
  Accumulate(hessians, 3, gate.data(), tokens);
  Project(b.linears[6], gate.data(), tokens, proj.data());
  for (int64_t i = 0; i < tokens * hidden; ++i) out[i] = h1[i] + proj[i];
  omp_set_num_threads(saved_max_threads);
}

}  // namespace spqr
