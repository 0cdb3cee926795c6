// The large-M N:M kernel's variants (sparse_nm_large_kernel.h); its validated entry point is
// sparse_nm_linear(SparseNMKernel::large_m, ...) in sparse_nm.h.
// Same math, weight layout and arguments as the small-M kernel: y = x @ W^T + bias for W
// n:m-sparse as NMPackedWeight stores it, fp32 or int8 values with per-row scales.  Where sparse_nm_linear
// streams the compressed weight once per few x rows (fast at small M), this kernel packs x into transposed
// panels and decodes each weight row once per call, then runs n/m of a dense GEMM's FMAs (fast at large M).
#pragma once

#include "sparse_nm.h"

namespace llmaccel {

void sparse_nm_large_generic(const SparseNMProblem& p);
void sparse_nm_large_avx2(const SparseNMProblem& p);
void sparse_nm_large_avx512(const SparseNMProblem& p);

}  // namespace llmaccel
