// sparse_nm_linear for any x86-64 CPU (baseline flags): the portable N:M
// kernel of sparse_nm_kernel.h, scalar, any pattern, any K; fp32 or int8 activations.
#include "sparse_nm_kernel.h"

namespace llmaccel {
void sparse_nm_generic(const SparseNMProblem& p) {
  if (p.act_int8)
    sn_run_i8<SnScalarI8Tile>(p);
  else
    sn_run<SnScalarTile>(p);
}
}  // namespace llmaccel
