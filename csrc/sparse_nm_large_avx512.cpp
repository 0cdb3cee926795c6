// sparse_nm_large_linear for AVX-512 CPUs (Skylake-SP and later, Zen 4): the body of sparse_nm_large_kernel.h
// over zmm registers (vec_f32.h).  The same panels of 48 x rows as the AVX2 unit, as 3 zmm per output channel: per kept
// weight 1 offset load, 1 broadcast and 3 panel loads for 3 FMAs of 16 lanes, where the AVX2 unit needs 6
// ymm loads for the same work (its loads, not its FMAs, bound it: sparse_nm_large_avx2.cpp).
#include "sparse_nm_large.h"
#include "sparse_nm_large_kernel.h"
#include "vec_f32.h"

namespace llmaccel {
void sparse_nm_large_avx512(const SparseNMProblem& p) { nl_run<VecF32x16>(p); }
}  // namespace llmaccel
