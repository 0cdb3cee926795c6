// The fp32 vector traits every micro-kernel written once over a traits type V uses: VecF32x8 (AVX2 + FMA)
// and VecF32x16 (AVX-512), each defined only in a unit compiled with its flags, inside that unit's
// capability namespace (common.h), so no copy built with wider flags can reach a lower unit.  Users: the
// BSR and large-M N:M micro-kernels (sparse_bsr_kernel.h, sparse_nm_large_kernel.h), the weight-only
// GEMV and tile (int8_linear_wo_*.h, deriving their tuned parameters), and the int8 epilogues'
// activations (activation.h: int8_mm_ymm.h, int8_mm_amx.cpp).
//     reg = T, W (floats per reg), zero(), load(p), store(p, v), set1(f), fma(a, b, c) = a * b + c, add,
//     sub, mul, div, hsum (lane sum)
// and activation.h's interface: M (a comparison mask), abs, copysign(magnitude, sign), min(a, b) =
// a < b ? a : b, round (to nearest even), gt / ge / lt (ordered), select(m, a, b) = m ? a : b,
// pow2i(n) = 2^n for an integral n in [-126, 0].
#pragma once

#include <immintrin.h>

#include "common.h"
#if defined(__AVX2__)
#include "simd_avx2.h"
#endif

namespace llmaccel {
inline namespace LLMACCEL_CPU_CAPABILITY {  // see common.h
namespace {

#if defined(__AVX2__) && defined(__FMA__)
struct VecF32x8 {
  using reg = __m256;
  using T = __m256;
  using M = __m256;
  static constexpr int W = 8;
  static reg zero() { return _mm256_setzero_ps(); }
  static reg load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, reg a) { _mm256_storeu_ps(p, a); }
  static reg set1(float f) { return _mm256_set1_ps(f); }
  static reg fma(reg a, reg b, reg c) { return _mm256_fmadd_ps(a, b, c); }
  static reg add(reg a, reg b) { return _mm256_add_ps(a, b); }
  static reg sub(reg a, reg b) { return _mm256_sub_ps(a, b); }
  static reg mul(reg a, reg b) { return _mm256_mul_ps(a, b); }
  static reg div(reg a, reg b) { return _mm256_div_ps(a, b); }
  static float hsum(reg v) { return hsum_ps(v); }
  static reg abs(reg a) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), a); }
  static reg copysign(reg m, reg s) {
    const reg sign = _mm256_set1_ps(-0.0f);
    return _mm256_or_ps(_mm256_andnot_ps(sign, m), _mm256_and_ps(sign, s));
  }
  static reg min(reg a, reg b) { return _mm256_min_ps(a, b); }  // a < b ? a : b, as ScalarF32
  static reg round(reg a) { return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static M gt(reg a, reg b) { return _mm256_cmp_ps(a, b, _CMP_GT_OQ); }
  static M ge(reg a, reg b) { return _mm256_cmp_ps(a, b, _CMP_GE_OQ); }
  static M lt(reg a, reg b) { return _mm256_cmp_ps(a, b, _CMP_LT_OQ); }
  static reg select(M m, reg a, reg b) { return _mm256_blendv_ps(b, a, m); }
  static reg pow2i(reg n) {
    const __m256i e = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
    return _mm256_castsi256_ps(_mm256_slli_epi32(e, 23));
  }
};
#endif

#if defined(__AVX512F__)
struct VecF32x16 {
  using reg = __m512;
  using T = __m512;
  using M = __mmask16;
  static constexpr int W = 16;
  static reg zero() { return _mm512_setzero_ps(); }
  static reg load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, reg a) { _mm512_storeu_ps(p, a); }
  static reg set1(float f) { return _mm512_set1_ps(f); }
  static reg fma(reg a, reg b, reg c) { return _mm512_fmadd_ps(a, b, c); }
  static reg add(reg a, reg b) { return _mm512_add_ps(a, b); }
  static reg sub(reg a, reg b) { return _mm512_sub_ps(a, b); }
  static reg mul(reg a, reg b) { return _mm512_mul_ps(a, b); }
  static reg div(reg a, reg b) { return _mm512_div_ps(a, b); }
  static float hsum(reg v) { return _mm512_reduce_add_ps(v); }
  static reg abs(reg a) { return _mm512_abs_ps(a); }
  static reg copysign(reg m, reg s) {
    const reg sign = _mm512_set1_ps(-0.0f);
    return _mm512_or_ps(_mm512_andnot_ps(sign, m), _mm512_and_ps(sign, s));
  }
  static reg min(reg a, reg b) { return _mm512_min_ps(a, b); }  // a < b ? a : b, as ScalarF32
  static reg round(reg a) { return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static M gt(reg a, reg b) { return _mm512_cmp_ps_mask(a, b, _CMP_GT_OQ); }
  static M ge(reg a, reg b) { return _mm512_cmp_ps_mask(a, b, _CMP_GE_OQ); }
  static M lt(reg a, reg b) { return _mm512_cmp_ps_mask(a, b, _CMP_LT_OQ); }
  static reg select(M m, reg a, reg b) { return _mm512_mask_blend_ps(m, b, a); }
  static reg pow2i(reg n) {
    const __m512i e = _mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127));
    return _mm512_castsi512_ps(_mm512_slli_epi32(e, 23));
  }
};
#endif

}  // namespace
}  // namespace LLMACCEL_CPU_CAPABILITY
}  // namespace llmaccel
