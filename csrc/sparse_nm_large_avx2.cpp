// sparse_nm_large_linear for AVX2 + FMA CPUs: the body of sparse_nm_large_kernel.h over ymm registers.
//
// Why NR = 2 channels x MR = 48 rows (6 ymm, 12 accumulators + 1 broadcast register of 16): the kernel is
// load-bound, not FMA-bound.  Per kept weight it issues 1 scalar load (the offset), 1 broadcast load (the
// value) and MV ymm loads of the panel (FMA memory operands) for MV FMAs, so the loads per FMA are
// (MV + 2) / MV: 4x3 (MR = 24) 1.67, 3x4 1.5, 2x6 1.33, 1x8 1.25.  Zen 3 issues 3 loads per cycle (2 of
// them 256-bit) and 2 FMAs; Intel up to Ice Lake 2 loads: fewer loads per FMA wins on both.  Measured in
// L1 on the 2-core AVX2 EPYC (thread CPU time, GFLOP/s on the kept weights, same run): 4x3 ~35-45, 3x4
// ~40-50, 2x6 ~45-58, 1x8 ~45-57; 1x8 has only 8 accumulator chains (one FMA latency of slack) and 64-row
// panels, so 2x6.  In the whole kernel 2x6 beat 4x3 by ~10-20 % at M = 512.
#include "sparse_nm_large.h"
#include "sparse_nm_large_kernel.h"
#include "vec_f32.h"

namespace llmaccel {
void sparse_nm_large_avx2(const SparseNMProblem& p) { nl_run<VecF32x8>(p); }
}  // namespace llmaccel
