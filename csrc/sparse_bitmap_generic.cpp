// sparse_bitmap_linear for any x86-64 CPU (baseline flags): the portable kernel of sparse_bitmap_kernel.h,
// scalar, one multiply-add per kept weight.
#include "sparse_bitmap_kernel.h"

namespace llmaccel {
int64_t sparse_bitmap_generic(const SparseBitmapProblem& p) {
  return sb_entry<SbScalarTile, SiScalarTile, &sb_count_bits>(p);
}
}  // namespace llmaccel
