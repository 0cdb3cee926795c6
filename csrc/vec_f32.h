// fp32 vector traits shared by the micro-kernels written once over a traits type V (the BSR micro-kernel,
// sparse_bsr_kernel.h; the large-M N:M micro-kernel, sparse_nm_large_kernel.h): VecF32x8 (AVX2 + FMA) and
// VecF32x16 (AVX-512), each defined only in a unit compiled with its flags, inside that unit's capability
// namespace (common.h), so no copy built with wider flags can reach a lower unit.
//     reg, W (floats per reg), zero(), load(p), store(p, v), set1(f), fma(a, b, c) = a * b + c, add, mul
#pragma once

#include <immintrin.h>

#include "common.h"

namespace llmaccel {
inline namespace LLMACCEL_CPU_CAPABILITY {  // see common.h
namespace {

#if defined(__AVX2__) && defined(__FMA__)
struct VecF32x8 {
  using reg = __m256;
  static constexpr int W = 8;
  static reg zero() { return _mm256_setzero_ps(); }
  static reg load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, reg a) { _mm256_storeu_ps(p, a); }
  static reg set1(float f) { return _mm256_set1_ps(f); }
  static reg fma(reg a, reg b, reg c) { return _mm256_fmadd_ps(a, b, c); }
  static reg add(reg a, reg b) { return _mm256_add_ps(a, b); }
  static reg mul(reg a, reg b) { return _mm256_mul_ps(a, b); }
};
#endif

#if defined(__AVX512F__)
struct VecF32x16 {
  using reg = __m512;
  static constexpr int W = 16;
  static reg zero() { return _mm512_setzero_ps(); }
  static reg load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, reg a) { _mm512_storeu_ps(p, a); }
  static reg set1(float f) { return _mm512_set1_ps(f); }
  static reg fma(reg a, reg b, reg c) { return _mm512_fmadd_ps(a, b, c); }
  static reg add(reg a, reg b) { return _mm512_add_ps(a, b); }
  static reg mul(reg a, reg b) { return _mm512_mul_ps(a, b); }
};
#endif

}  // namespace
}  // namespace LLMACCEL_CPU_CAPABILITY
}  // namespace llmaccel
