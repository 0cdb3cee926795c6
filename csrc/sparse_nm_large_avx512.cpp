// sparse_nm_large_linear for AVX-512 CPUs (Skylake-SP and later, Zen 4): the body of sparse_nm_large_kernel.h
// over zmm registers.  The same panels of 48 x rows as the AVX2 unit, as 3 zmm per output channel: per kept
// weight 1 offset load, 1 broadcast and 3 panel loads for 3 FMAs of 16 lanes, where the AVX2 unit needs 6
// ymm loads for the same work (its loads, not its FMAs, bound it: sparse_nm_large_avx2.cpp).
#include <immintrin.h>

#include "sparse_nm_large.h"
#include "sparse_nm_large_kernel.h"

namespace llmaccel {
inline namespace LLMACCEL_CPU_CAPABILITY {
namespace {

struct NlVecAvx512 {
  using reg = __m512;
  static constexpr int W = 16;
  static reg zero() { return _mm512_setzero_ps(); }
  static reg load(const float* q) { return _mm512_loadu_ps(q); }
  static void store(float* q, reg v) { _mm512_storeu_ps(q, v); }
  static reg bcast(float v) { return _mm512_set1_ps(v); }
  static reg fma(reg a, reg b, reg c) { return _mm512_fmadd_ps(a, b, c); }
};

}  // namespace
}  // namespace LLMACCEL_CPU_CAPABILITY

void sparse_nm_large_avx512(const SparseNMProblem& p) { nl_run<NlVecAvx512>(p); }
}  // namespace llmaccel
