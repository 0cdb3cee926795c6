// sparse_nm_linear for any x86-64 CPU (baseline flags): the portable N:M
// kernel of sparse_nm_kernel.h, scalar, any pattern, any K.
#include "sparse_nm_kernel.h"

namespace llmaccel {
void sparse_nm_generic(const SparseNMProblem& p) { sn_run<SnScalarTile>(p); }
}  // namespace llmaccel
