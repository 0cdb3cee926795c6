// Elementwise activations for fp32 GEMM epilogues (int8_linear's fused
// `activation`), written once for every ISA variant.
//
//   relu(y)      = max(y, 0)
//   gelu(y)      = 0.5 y (1 + erf(y / sqrt 2))                           (erf GELU, torch's default)
//   gelu_tanh(y) = 0.5 y (1 + tanh(sqrt(2 / pi) (y + 0.044715 y^3)))     (approximate='tanh')
//
// Every function is branch-free (both sides of a range split are computed
// and one is selected) and built from fma / min / max / bit operations, so a
// loop over a tile's outputs vectorizes, and std::fma (always fused, exactly
// rounded) makes the result bit-identical on every variant, including the
// generic one where fma is a library call.
//
// erf: Norbert Juffa's faithfully rounded erff split (published 2016 on Stack
// Overflow, question 35148198, with its minimax coefficients):
//   |a| <= 475/512:  erf(a) = a + a * P(a^2)                (P degree 5)
//   |a| >  475/512:  erf(a) = sign(a) (1 - exp(-|a| + |a| Q(|a|)))   (Q degree 6 in |a|)
// The exp here is 2^(r log2 e) through exp2_poly.h (Cephes, ~1.7e-7 relative)
// rather than Juffa's expm1f; the tail's exp is < 0.55, so its relative error
// becomes a smaller absolute one.  Measured against float64 std::erf on
// every float in [1e-30, 4) of both signs, a 1e-5 grid over [-10, 10], a
// 1/64 grid up to |a| = 1e4, +-0 and +-inf (1.7e9 points): max absolute
// error 7.8e-8, max 1.30 ulp (both at a = 0.9536, just past the split);
// erf(+-inf) = +-1, erf(NaN) = NaN.  GELU from it: |error| <= 1.1e-7 max(1, |y|)
// on a 1e-5 grid over [-12, 12]; gelu_tanh: 1.3e-7 max(1, |y|).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "common.h"
#include "exp2_poly.h"

namespace llmaccel {

// int8_linear's `activation` codes (the binding passes the name).
enum Activation : int { kActNone = 0, kActGelu = 1, kActGeluTanh = 2, kActRelu = 3 };

inline namespace LLMACCEL_CPU_CAPABILITY {  // see common.h

struct ScalarF32 {
  using T = float;
  static float set1(float c) { return c; }
  static float fma(float a, float b, float c) { return std::fma(a, b, c); }
};

// 2^x for x <= 0 (x clamped below at -126: 2^-126 is the smallest normal,
// which is 0 for every caller here after 1 - e).  2^x = 2^n * 2^f with
// n = round(x), |f| <= 1/2; 2^n is built in the exponent bits.
inline float exp2_nonpositive(float x) {
  x = x >= -126.0f ? x : -126.0f;  // also maps NaN to -126: the int conversion below must see a finite value
  const float n = std::nearbyint(x);
  const float p = exp2_poly<ScalarF32>(x - n);
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, 4);
  return p * scale;
}

inline float erf_f32(float a) {
  const float t = std::fabs(a), s = a * a;
  // Small |a|: odd polynomial.
  float p = -5.96761703e-4f;
  p = std::fma(p, s, 4.99119423e-3f);
  p = std::fma(p, s, -2.67681349e-2f);
  p = std::fma(p, s, 1.12819925e-1f);
  p = std::fma(p, s, -3.76125336e-1f);
  p = std::fma(p, s, 1.28379166e-1f);
  const float small = std::fma(p, a, a);
  // Large |a|: 1 - exp(r), r = -t + t Q(t) <= 0.  t is clamped so inf gives 1, not NaN (inf - inf).
  const float tc = t < 16.0f ? t : 16.0f;
  const float sc = tc * tc;
  float r = std::fma(-1.72853470e-5f, tc, 3.83197126e-4f);
  const float u = std::fma(-3.88396438e-3f, tc, 2.42546219e-2f);
  r = std::fma(r, sc, u);
  r = std::fma(r, tc, -1.06777877e-1f);
  r = std::fma(r, tc, -6.34846687e-1f);
  r = std::fma(r, tc, -1.28717512e-1f);
  r = std::fma(r, tc, -tc);
  const float large = std::copysign(1.0f - exp2_nonpositive(r * 1.44269504088896341f), a);
  // NaN: t > c is false, so NaN takes the small branch, where it propagates.
  return t > 0.927734375f ? large : small;
}

// tanh(u) = sign(u) (1 - e) / (1 + e), e = exp(-2|u|) in (0, 1]: no overflow
// for any u; near 0 the absolute error is a few ulp of 1 (what GELU needs).
inline float tanh_f32(float u) {
  const float e = exp2_nonpositive(-2.0f * 1.44269504088896341f * std::fabs(u));
  return std::copysign((1.0f - e) / (1.0f + e), u);
}

inline float gelu_f32(float y) { return 0.5f * y * (1.0f + erf_f32(y * 0.70710678118654752f)); }

inline float gelu_tanh_f32(float y) {
  const float inner = 0.79788456080286536f * std::fma(0.044715f * y, y * y, y);
  return 0.5f * y * (1.0f + tanh_f32(inner));
}

// relu keeps NaN (torch.relu does), which max(y, 0) would not.
inline float relu_f32(float y) { return y < 0.0f ? 0.0f : y; }

// Applies `act` to v[0 .. n) in place.  The switch is outside the loops, so
// each loop is one straight-line body the compiler can vectorize.
inline void apply_activation(int act, float* v, int n) {
  switch (act) {
    case kActGelu:
      for (int i = 0; i < n; ++i) v[i] = gelu_f32(v[i]);
      break;
    case kActGeluTanh:
      for (int i = 0; i < n; ++i) v[i] = gelu_tanh_f32(v[i]);
      break;
    case kActRelu:
      for (int i = 0; i < n; ++i) v[i] = relu_f32(v[i]);
      break;
    default:
      break;
  }
}

}  // namespace LLMACCEL_CPU_CAPABILITY
}  // namespace llmaccel
