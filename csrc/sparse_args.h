// Argument checks shared by the sparse linear entry points (sparse_nm.cpp, sparse_bitmap.cpp): the scale,
// bias, output and thread arguments every one of them takes the same way.
#pragma once

#include <cstdint>
#include <string>

#include "common.h"

namespace llmaccel {
inline namespace LLMACCEL_CPU_CAPABILITY {  // see common.h

// int8 values need N per-row scales and fp32 values none; bias (may be null) [N]; y [M, N] with rows that do
// not overlap; nthreads >= 1.
inline void check_sparse_scale_bias_y(const char* op, int64_t M, int64_t N, bool values_int8, const float* scale,
                                      const float* bias, const float* y, int64_t y_sm, int nthreads) {
  if (values_int8) {
    if (!scale && N > 0) fail(op, "scale is a null pointer (int8 values need per-row scales)");
    check_matrix(op, "scale", scale, 1, N, 0, 1);
  } else if (scale) {
    fail(op, "scale is given but the values are fp32 (pass 0, or values_int8 = true)");
  }
  if (bias) check_matrix(op, "bias", bias, 1, N, 0, 1);
  check_matrix(op, "y", y, M, N, y_sm, 1);
  if (M > 1 && N > 0 && y_sm < N)
    fail(op, "y rows overlap (y_sm = " + std::to_string(y_sm) + " < N = " + std::to_string(N) + ")");
  if (nthreads < 1) fail(op, "nthreads must be >= 1, got " + std::to_string(nthreads));
}

}  // namespace LLMACCEL_CPU_CAPABILITY
}  // namespace llmaccel
