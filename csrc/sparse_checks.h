// Argument checks the sparse linear entry points (sparse_nm.cpp, sparse_bsr.cpp) share: the int8 scales,
// the bias and the output.  Messages start with the op name, like every check in common.h.
#pragma once

#include <cstdint>
#include <string>

#include "common.h"

namespace llmaccel {
inline namespace LLMACCEL_CPU_CAPABILITY {  // see common.h

// values_int8: N fp32 per-row scales at `scale`; fp32 values: no scale.  bias (N floats) may be null.
// y [M, N] with row stride y_sm, rows that do not overlap.
inline void check_scale_bias_y(const char* op, bool values_int8, const float* scale, const float* bias, float* y,
                               int64_t M, int64_t N, int64_t y_sm) {
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
}

}  // namespace LLMACCEL_CPU_CAPABILITY
}  // namespace llmaccel
