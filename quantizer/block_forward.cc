#include "quantizer/block_forward.h"

#include <omp.h>

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "engine/backend/cpu/rope.h"
#include "engine/util/half.h"

namespace spqr {
namespace {

using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
// Scratch buffers are 64-byte aligned: Eigen's vectorized reductions (the softmax normalizer)
// peel differently for differently aligned data, so unaligned scratch would make the sums, and
// with them the forward, depend on where malloc put the buffer.

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
  // the top for why): xn, q, k, v, attn, proj, h1, gate, up, one score block per thread.
  const int64_t score_floats = std::min(kAttentionRowBlock, tokens) * tokens;
  const int64_t sizes[10] = {tokens * hidden,       tokens * heads * hd, tokens * kv * hd,
                             tokens * kv * hd,      tokens * heads * hd, tokens * hidden,
                             tokens * hidden,       tokens * inter,      tokens * inter,
                             score_floats * threads};
  constexpr int64_t kAlignFloats = 16;  // 64 bytes
  int64_t total = kAlignFloats;
  for (int64_t n : sizes) total += (n + kAlignFloats - 1) / kAlignFloats * kAlignFloats;
  if (scratch->storage.size() < static_cast<size_t>(total)) {
    scratch->storage.resize(static_cast<size_t>(total));
  }
  float* pieces[10];
  {
    const uintptr_t base = reinterpret_cast<uintptr_t>(scratch->storage.data());
    float* next = scratch->storage.data() + ((64 - base % 64) % 64) / sizeof(float);
    for (int i = 0; i < 10; ++i) {
      pieces[i] = next;
      next += (sizes[i] + kAlignFloats - 1) / kAlignFloats * kAlignFloats;
    }
  }
  float *xn = pieces[0], *q = pieces[1], *k = pieces[2], *v = pieces[3], *attn = pieces[4],
        *proj = pieces[5], *h1 = pieces[6], *gate = pieces[7], *up = pieces[8];
  // Attention half.
  RmsNormRows(x, tokens, hidden, b.input_norm, c.rms_norm_eps, xn);
  Accumulate(hessians, 0, xn, tokens);
  Project(b.linears[0], xn, tokens, q);
  Project(b.linears[1], xn, tokens, k);
  Project(b.linears[2], xn, tokens, v);
  for (int64_t t = 0; t < tokens; ++t) {
    cpu::ApplyRope(q + t * heads * hd, heads, k + t * kv * hd, kv, hd, t, inv_freq);
  }
  const int64_t group = heads / kv;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  // Heads are independent; each thread keeps one score buffer for all the heads it takes.
#pragma omp parallel num_threads(threads)
  {
    float* scores = pieces[9] + score_floats * omp_get_thread_num();
#pragma omp for schedule(static)
    for (int64_t h = 0; h < heads; ++h) {
      const int64_t kvh = h / group;
      AttendHead(q + h * hd, heads * hd, k + kvh * hd, v + kvh * hd, kv * hd, tokens, hd, scale,
                 attn + h * hd, scores);
    }
  }
  Accumulate(hessians, 1, attn, tokens);
  Project(b.linears[3], attn, tokens, proj);
  for (int64_t i = 0; i < tokens * hidden; ++i) h1[i] = x[i] + proj[i];
  // MLP half.
  RmsNormRows(h1, tokens, hidden, b.post_norm, c.rms_norm_eps, xn);
  Accumulate(hessians, 2, xn, tokens);
  Project(b.linears[4], xn, tokens, gate);
  Project(b.linears[5], xn, tokens, up);
  {
    // SiLU(gate) * up, with Eigen's vectorized exp.
    Eigen::Map<Eigen::ArrayXf> g(gate, tokens * inter);
    Eigen::Map<const Eigen::ArrayXf> u(up, tokens * inter);
    g = g / (1.0f + (-g).exp()) * u;
  }
  Accumulate(hessians, 3, gate, tokens);
  Project(b.linears[6], gate, tokens, proj);
  for (int64_t i = 0; i < tokens * hidden; ++i) out[i] = h1[i] + proj[i];
  omp_set_num_threads(saved_max_threads);
}

}  // namespace spqr
