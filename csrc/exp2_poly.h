// The 2^f polynomial every attention variant's exp2 evaluates, written once.
#pragma once

#include "common.h"

namespace llmaccel {
inline namespace LLMACCEL_CPU_CAPABILITY {  // see common.h

// 2^f for |f| <= 1/2 (the fraction left after 2^x = 2^round(x) * 2^f):
// Cephes exp2f's degree-6 polynomial, max relative error ~1.7e-7, in Horner
// form p = ((c0 f + c1) f + ...) f + c6.  V is the variant's vector traits:
// V::T the type (a float for the generic variant), V::set1(c) a broadcast,
// V::fma(a, b, c) = a * b + c.  Each variant then scales by 2^round(x) its
// own way (exponent bits, or vscalefps) and handles the range ends.
template <class V>
inline typename V::T exp2_poly(typename V::T f) {
  constexpr float kC[7] = {1.535336188319500e-4f, 1.339887440266574e-3f, 9.618437357674640e-3f,
                           5.550332471162809e-2f, 2.402264791363012e-1f, 6.931472028550421e-1f,
                           1.0f};
  typename V::T p = V::set1(kC[0]);
#pragma GCC unroll 6
  for (int i = 1; i < 7; ++i) p = V::fma(p, f, V::set1(kC[i]));
  return p;
}

}  // namespace LLMACCEL_CPU_CAPABILITY
}  // namespace llmaccel
