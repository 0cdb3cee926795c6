// sparse_bsr_linear for AVX-512 CPUs (Skylake-SP and later, Zen 4); chosen only when CPUID reports every
// feature of the avx512 level.  The loop nest and micro-kernel of sparse_bsr_kernel.h over __m512 (vec_f32.h):
// a 6 x 32 micro-tile is 12 zmm accumulators + 2 packed weight vectors + 1 broadcast of x, per k step 2 loads,
// 6 broadcasts, 12 FMAs: twice the AVX2 unit's outputs per instruction, and a 32-row tile (the usual height) is
// one panel.
#include "sparse_bsr_kernel.h"
#include "vec_f32.h"

namespace llmaccel {
void sparse_bsr_avx512(const SparseBSRProblem& p) { BsrKernel<VecF32x16>::run(p); }
}  // namespace llmaccel
