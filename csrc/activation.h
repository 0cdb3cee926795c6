// Elementwise activations for fp32 GEMM epilogues (int8_linear's fused
// `activation`), written once for every ISA variant.
//
//   relu(y)      = max(y, 0)
//   gelu(y)      = 0.5 y (1 + erf(y / sqrt 2))                           (erf GELU, torch's default)
//   gelu_tanh(y) = 0.5 y (1 + tanh(sqrt(2 / pi) (y + 0.044715 y^3)))     (approximate='tanh')
//
// Every function is branch-free (both sides of a range split are computed
// and one is selected), built from fma / min / compare-select / bit
// operations, and written once over vector traits V (below): ScalarF32 for
// the generic epilogue, an ISA's SIMD traits for its vector epilogue
// (int8_mm_avx2.cpp).  Every fma is explicit (fused, exactly rounded, a
// library call where the target has none), so the scalar and vector forms
// perform the same IEEE operations in the same order and agree bit for bit.
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

// Vector traits V (the same interface for a scalar float and for a SIMD
// register, so one body serves the scalar epilogue and an ISA's vector one):
//   V::T, V::M (a comparison mask); set1, fma (fused), add, sub, mul, div,
//   abs, copysign(magnitude, sign), min(a, b) = a < b ? a : b (so a NaN a
//   gives b), round (to nearest even), gt / ge / lt (ordered: false on NaN),
//   select(m, a, b) = m ? a : b, pow2i(n) = 2^n for an integral n in [-126, 0].
struct ScalarF32 {
  using T = float;
  using M = bool;
  static float set1(float c) { return c; }
  static float fma(float a, float b, float c) { return std::fma(a, b, c); }
  static float add(float a, float b) { return a + b; }
  static float sub(float a, float b) { return a - b; }
  static float mul(float a, float b) { return a * b; }
  static float div(float a, float b) { return a / b; }
  static float abs(float a) { return std::fabs(a); }
  static float copysign(float m, float s) { return std::copysign(m, s); }
  static float min(float a, float b) { return a < b ? a : b; }
  static float round(float a) { return std::nearbyint(a); }
  static bool gt(float a, float b) { return a > b; }
  static bool ge(float a, float b) { return a >= b; }
  static bool lt(float a, float b) { return a < b; }
  static float select(bool m, float a, float b) { return m ? a : b; }
  static float pow2i(float n) {
    const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
    float r;
    std::memcpy(&r, &bits, 4);
    return r;
  }
};

// 2^x for x <= 0 (x clamped below at -126: 2^-126 is the smallest normal,
// which is 0 for every caller here after 1 - e).  2^x = 2^n * 2^f with
// n = round(x), |f| <= 1/2; 2^n is built in the exponent bits.
template <class V>
inline typename V::T exp2_nonpositive(typename V::T x) {
  // Also maps NaN to -126: the int conversion in pow2i must see a finite value.
  x = V::select(V::ge(x, V::set1(-126.0f)), x, V::set1(-126.0f));
  const typename V::T n = V::round(x);
  return V::mul(exp2_poly<V>(V::sub(x, n)), V::pow2i(n));
}

template <class V>
inline typename V::T erf_v(typename V::T a) {
  using T = typename V::T;
  const T t = V::abs(a), s = V::mul(a, a);
  // Small |a|: odd polynomial a + a P(a^2).
  T p = V::set1(-5.96761703e-4f);
  p = V::fma(p, s, V::set1(4.99119423e-3f));
  p = V::fma(p, s, V::set1(-2.67681349e-2f));
  p = V::fma(p, s, V::set1(1.12819925e-1f));
  p = V::fma(p, s, V::set1(-3.76125336e-1f));
  p = V::fma(p, s, V::set1(1.28379166e-1f));
  const T small = V::fma(p, a, a);
  // Large |a|: 1 - exp(r), r = -t + t Q(t) <= 0.  t is clamped so inf gives 1, not NaN (inf - inf).
  const T tc = V::min(t, V::set1(16.0f));
  const T sc = V::mul(tc, tc);
  T r = V::fma(V::set1(-1.72853470e-5f), tc, V::set1(3.83197126e-4f));
  const T u = V::fma(V::set1(-3.88396438e-3f), tc, V::set1(2.42546219e-2f));
  r = V::fma(r, sc, u);
  r = V::fma(r, tc, V::set1(-1.06777877e-1f));
  r = V::fma(r, tc, V::set1(-6.34846687e-1f));
  r = V::fma(r, tc, V::set1(-1.28717512e-1f));
  r = V::fma(r, tc, V::sub(V::set1(0.0f), tc));
  const T e = exp2_nonpositive<V>(V::mul(r, V::set1(1.44269504088896341f)));
  const T large = V::copysign(V::sub(V::set1(1.0f), e), a);
  // NaN: t > c is false, so NaN takes the small branch, where it propagates.
  return V::select(V::gt(t, V::set1(0.927734375f)), large, small);
}

// tanh(u) = sign(u) (1 - e) / (1 + e), e = exp(-2|u|) in (0, 1]: no overflow
// for any u; near 0 the absolute error is a few ulp of 1 (what GELU needs).
template <class V>
inline typename V::T tanh_v(typename V::T u) {
  const typename V::T e = exp2_nonpositive<V>(V::mul(V::set1(-2.0f * 1.44269504088896341f), V::abs(u)));
  return V::copysign(V::div(V::sub(V::set1(1.0f), e), V::add(V::set1(1.0f), e)), u);
}

template <class V>
inline typename V::T gelu_v(typename V::T y) {
  const typename V::T erf = erf_v<V>(V::mul(y, V::set1(0.70710678118654752f)));
  return V::mul(V::mul(V::set1(0.5f), y), V::add(V::set1(1.0f), erf));
}

template <class V>
inline typename V::T gelu_tanh_v(typename V::T y) {
  const typename V::T inner =
      V::mul(V::set1(0.79788456080286536f), V::fma(V::mul(V::set1(0.044715f), y), V::mul(y, y), y));
  return V::mul(V::mul(V::set1(0.5f), y), V::add(V::set1(1.0f), tanh_v<V>(inner)));
}

// relu keeps NaN (torch.relu does), which max(y, 0) would not.
template <class V>
inline typename V::T relu_v(typename V::T y) {
  return V::select(V::lt(y, V::set1(0.0f)), V::set1(0.0f), y);
}

// `act` applied to one value (or one vector) of V.
template <class V>
inline typename V::T activate(int act, typename V::T y) {
  switch (act) {
    case kActGelu: return gelu_v<V>(y);
    case kActGeluTanh: return gelu_tanh_v<V>(y);
    case kActRelu: return relu_v<V>(y);
    default: return y;
  }
}

// P vectors of V handled as one value: every operation of the traits interface applied to each of the P in
// turn.  activate<VecGroup<V, P>> therefore computes exactly what P calls of activate<V> compute (the same
// operations on each lane), but as P independent dependency chains side by side.  Why: erf GELU is one chain
// of ~30 dependent operations (4-cycle latency each); a vector at a time leaves the out-of-order core waiting
// on that chain, so an epilogue activating one vector after another ran 30-40 cycles a zmm vector on the
// Sapphire Rapids class VM (one core, in L2), 4 side by side 24-26 (the two FMA ports' bound is ~23); with
// AVX2's 8-lane registers 33-36 against 26-27.
template <class V, int P>
struct VecGroup {
  struct T {
    typename V::T v[P];
  };
  struct M {
    typename V::M v[P];
  };
#define LLMACCEL_VG_EACH(expr) \
  T r;                         \
  for (int i = 0; i < P; ++i) r.v[i] = expr; \
  return r
  static T set1(float c) { LLMACCEL_VG_EACH(V::set1(c)); }
  static T fma(T a, T b, T c) { LLMACCEL_VG_EACH(V::fma(a.v[i], b.v[i], c.v[i])); }
  static T add(T a, T b) { LLMACCEL_VG_EACH(V::add(a.v[i], b.v[i])); }
  static T sub(T a, T b) { LLMACCEL_VG_EACH(V::sub(a.v[i], b.v[i])); }
  static T mul(T a, T b) { LLMACCEL_VG_EACH(V::mul(a.v[i], b.v[i])); }
  static T div(T a, T b) { LLMACCEL_VG_EACH(V::div(a.v[i], b.v[i])); }
  static T abs(T a) { LLMACCEL_VG_EACH(V::abs(a.v[i])); }
  static T copysign(T m, T s) { LLMACCEL_VG_EACH(V::copysign(m.v[i], s.v[i])); }
  static T min(T a, T b) { LLMACCEL_VG_EACH(V::min(a.v[i], b.v[i])); }
  static T round(T a) { LLMACCEL_VG_EACH(V::round(a.v[i])); }
  static T pow2i(T n) { LLMACCEL_VG_EACH(V::pow2i(n.v[i])); }
  static T select(M m, T a, T b) { LLMACCEL_VG_EACH(V::select(m.v[i], a.v[i], b.v[i])); }
#undef LLMACCEL_VG_EACH
#define LLMACCEL_VG_CMP(name)                                  \
  static M name(T a, T b) {                                    \
    M r;                                                       \
    for (int i = 0; i < P; ++i) r.v[i] = V::name(a.v[i], b.v[i]); \
    return r;                                                  \
  }
  LLMACCEL_VG_CMP(gt)
  LLMACCEL_VG_CMP(ge)
  LLMACCEL_VG_CMP(lt)
#undef LLMACCEL_VG_CMP
};

// `act` applied to the P vectors y[0 .. P) in place, side by side (VecGroup: why).  The epilogues of the
// int8 GEMMs gather a tile's outputs into such an array before they activate them.
template <class V, int P>
inline void activate_group(int act, typename V::T (&y)[P]) {
  if (act == kActNone) return;
  typename VecGroup<V, P>::T g;
  for (int i = 0; i < P; ++i) g.v[i] = y[i];
  g = activate<VecGroup<V, P>>(act, g);
  for (int i = 0; i < P; ++i) y[i] = g.v[i];
}

inline float erf_f32(float a) { return erf_v<ScalarF32>(a); }
inline float tanh_f32(float u) { return tanh_v<ScalarF32>(u); }
inline float gelu_f32(float y) { return gelu_v<ScalarF32>(y); }
inline float gelu_tanh_f32(float y) { return gelu_tanh_v<ScalarF32>(y); }
inline float relu_f32(float y) { return relu_v<ScalarF32>(y); }

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
