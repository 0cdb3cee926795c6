// sparse_bsr_linear for AVX-512 CPUs (Skylake-SP and later, Zen 4); chosen only when CPUID reports every
// feature of the avx512 level.  The loop nest and micro-kernel of sparse_bsr_kernel.h over __m512: a 6 x 32
// micro-tile is 12 zmm accumulators + 2 packed weight vectors + 1 broadcast of x, per k step 2 loads, 6
// broadcasts, 12 FMAs: twice the AVX2 unit's outputs per instruction, and a 32-row tile (the usual height) is
// one panel.
#include <immintrin.h>

#include "sparse_bsr_kernel.h"

namespace llmaccel {
inline namespace LLMACCEL_CPU_CAPABILITY {
namespace {

struct Avx512 {
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

}  // namespace
}  // namespace LLMACCEL_CPU_CAPABILITY

void sparse_bsr_avx512(const SparseBSRProblem& p) { BsrKernel<Avx512>::run(p); }
}  // namespace llmaccel
