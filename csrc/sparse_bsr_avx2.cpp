// sparse_bsr_linear for AVX2 + FMA CPUs (Haswell and later, Zen 1-3); chosen only when CPUID reports them.
// The loop nest and micro-kernel of sparse_bsr_kernel.h over __m256 (vec_f32.h): a 6 x 16 micro-tile is 12 ymm
// accumulators + 2 packed weight vectors + 1 broadcast of x, per k step 2 loads, 6 broadcasts, 12 FMAs
// (6 cycles on two FMA ports; the loads fit in the 3 load ports' time).
#include "sparse_bsr_kernel.h"
#include "vec_f32.h"

namespace llmaccel {
void sparse_bsr_avx2(const SparseBSRProblem& p) { BsrKernel<VecF32x8>::run(p); }
}  // namespace llmaccel
