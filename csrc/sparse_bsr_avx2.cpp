// sparse_bsr_linear for AVX2 + FMA CPUs (Haswell and later, Zen 1-3); chosen only when CPUID reports them.
// The loop nest and micro-kernel of sparse_bsr_kernel.h over __m256: a 6 x 16 micro-tile is 12 ymm
// accumulators + 2 packed weight vectors + 1 broadcast of x, per k step 2 loads, 6 broadcasts, 12 FMAs
// (6 cycles on two FMA ports; the loads fit in the 3 load ports' time).
#include <immintrin.h>

#include "sparse_bsr_kernel.h"

namespace llmaccel {
inline namespace LLMACCEL_CPU_CAPABILITY {
namespace {

struct Avx2 {
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

}  // namespace
}  // namespace LLMACCEL_CPU_CAPABILITY

void sparse_bsr_avx2(const SparseBSRProblem& p) { BsrKernel<Avx2>::run(p); }
}  // namespace llmaccel
