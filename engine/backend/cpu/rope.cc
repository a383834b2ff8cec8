#include "engine/backend/cpu/rope.h"

#include <cmath>

namespace spqr::cpu {

std::vector<float> ComputeRopeInvFreq(int64_t head_dim, double rope_theta,
                                      const RopeScaling& scaling) {
  const int64_t half = head_dim / 2;
  std::vector<float> inv_freq(half);
  for (int64_t i = 0; i < half; ++i) {
    // transformers: 1 / base ** (arange(0, dim, 2).float() / dim), all in fp32.
    const float exponent = static_cast<float>(2 * i) / static_cast<float>(head_dim);
    const float power = static_cast<float>(std::pow(rope_theta, static_cast<double>(exponent)));
    inv_freq[i] = 1.0f / power;
  }
  if (scaling.type == RopeScaling::Type::kLinear) {
    for (float& f : inv_freq) f = static_cast<float>(f / scaling.factor);
  } else if (scaling.type == RopeScaling::Type::kLlama3) {
    // transformers' _compute_llama3_parameters.
    const double old_len = static_cast<double>(scaling.original_max_position_embeddings);
    const double low_freq_wavelen = old_len / scaling.low_freq_factor;
    const double high_freq_wavelen = old_len / scaling.high_freq_factor;
    for (float& f : inv_freq) {
      const double freq = f;
      const double wavelen = 2.0 * M_PI / freq;
      double scaled = wavelen > low_freq_wavelen ? freq / scaling.factor : freq;
      const bool medium = !(wavelen < high_freq_wavelen) && !(wavelen > low_freq_wavelen);
      if (medium) {
        const double smooth = (old_len / wavelen - scaling.low_freq_factor) /
                              (scaling.high_freq_factor - scaling.low_freq_factor);
        scaled = (1.0 - smooth) * scaled / scaling.factor + smooth * scaled;
      }
      f = static_cast<float>(scaled);
    }
  }
  return inv_freq;
}

namespace {

void RotateHeads(float* x, int64_t heads, int64_t head_dim, const float* cos, const float* sin) {
  const int64_t half = head_dim / 2;
  for (int64_t h = 0; h < heads; ++h) {
    float* a = x + h * head_dim;
    float* b = a + half;
    for (int64_t i = 0; i < half; ++i) {
      const float x1 = a[i];
      const float x2 = b[i];
      a[i] = x1 * cos[i] - x2 * sin[i];
      b[i] = x2 * cos[i] + x1 * sin[i];
    }
  }
}

}  // namespace

void ApplyRope(float* q, int64_t q_heads, float* k, int64_t k_heads, int64_t head_dim,
               int64_t position, const float* inv_freq) {
  const int64_t half = head_dim / 2;
  // head_dim is at most a few hundred; the stack arrays avoid an allocation per token.
  float cos[512];
  float sin[512];
  const float pos = static_cast<float>(position);
  for (int64_t i = 0; i < half; ++i) {
    // transformers forms the angle as an fp32 product, then takes cos/sin of it.
    const float angle = inv_freq[i] * pos;
    cos[i] = static_cast<float>(std::cos(static_cast<double>(angle)));
    sin[i] = static_cast<float>(std::sin(static_cast<double>(angle)));
  }
  RotateHeads(q, q_heads, head_dim, cos, sin);
  if (k != nullptr) RotateHeads(k, k_heads, head_dim, cos, sin);
}

}  // namespace spqr::cpu
