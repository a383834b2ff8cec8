#include "quantizer/block_forward.h"

#include <omp.h>

#include <Eigen/Core>
#include <cmath>

#include "engine/backend/cpu/rope.h"
#include "engine/util/half.h"

namespace spqr {
namespace {

using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

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
  std::vector<float> xn(static_cast<size_t>(tokens * hidden));
  std::vector<float> q(static_cast<size_t>(tokens * heads * hd));
  std::vector<float> k(static_cast<size_t>(tokens * kv * hd)), v(k.size());
  std::vector<float> attn(q.size());
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
  if (threads <= 0) threads = omp_get_max_threads();
  const float inv_sqrt = 1.0f / std::sqrt(static_cast<float>(hd));
#pragma omp parallel for num_threads(threads) schedule(dynamic)
  for (int64_t h = 0; h < heads; ++h) {
    std::vector<float> scores(static_cast<size_t>(tokens));
    const int64_t kvh = h / group;
    for (int64_t t = 0; t < tokens; ++t) {
      const float* qt = q.data() + (t * heads + h) * hd;
      float mx = -INFINITY;
      for (int64_t s = 0; s <= t; ++s) {
        const float* ks = k.data() + (s * kv + kvh) * hd;
        float dot = 0.0f;
        for (int64_t i = 0; i < hd; ++i) dot += qt[i] * ks[i];
        scores[s] = dot * inv_sqrt;
        mx = std::max(mx, scores[s]);
      }
      double sum = 0.0;
      for (int64_t s = 0; s <= t; ++s) {
        scores[s] = std::exp(scores[s] - mx);
        sum += scores[s];
      }
      float* o = attn.data() + (t * heads + h) * hd;
      for (int64_t i = 0; i < hd; ++i) o[i] = 0.0f;
      for (int64_t s = 0; s <= t; ++s) {
        const float p = static_cast<float>(scores[s] / sum);
        const float* vs = v.data() + (s * kv + kvh) * hd;
        for (int64_t i = 0; i < hd; ++i) o[i] += p * vs[i];
      }
    }
  }
  Accumulate(hessians, 1, attn.data(), tokens);
  std::vector<float> proj(static_cast<size_t>(tokens * hidden));
  Project(b.linears[3], attn.data(), tokens, proj.data());
  std::vector<float> h1(static_cast<size_t>(tokens * hidden));
  for (int64_t i = 0; i < tokens * hidden; ++i) h1[i] = x[i] + proj[i];
  // MLP half.
  RmsNormRows(h1.data(), tokens, hidden, b.post_norm, c.rms_norm_eps, xn.data());
  Accumulate(hessians, 2, xn.data(), tokens);
  std::vector<float> gate(static_cast<size_t>(tokens * inter)), up(gate.size());
  Project(b.linears[4], xn.data(), tokens, gate.data());
  Project(b.linears[5], xn.data(), tokens, up.data());
  for (int64_t i = 0; i < tokens * inter; ++i) {
    gate[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
  }
  Accumulate(hessians, 3, gate.data(), tokens);
  Project(b.linears[6], gate.data(), tokens, proj.data());
  for (int64_t i = 0; i < tokens * hidden; ++i) out[i] = h1[i] + proj[i];
}

}  // namespace spqr
