// Pieces of the sparse linear loop nests shared by sparse_nm_kernel.h and sparse_bitmap_kernel.h: the
// threads' blocks of output rows, the fixed-order sum of 4 partial sums, and the output store (bias, int8
// scale).  Compiled into each ISA unit's capability namespace like the kernels (common.h).
#pragma once

#include <algorithm>
#include <cstdint>

#include "common.h"

namespace llmaccel {
inline namespace LLMACCEL_CPU_CAPABILITY {  // see common.h
namespace {

// Thread t of T owns output rows [n0, n1): contiguous blocks whose ends are rounded to 16, so no two threads
// write one cache line of y.
inline void sparse_row_block(int64_t N, int t, int T, int64_t* n0, int64_t* n1) {
  const int64_t per = llmaccel::round_up(llmaccel::ceil_div(N, T), 16);
  *n0 = std::min<int64_t>(N, t * per);
  *n1 = std::min<int64_t>(N, *n0 + per);
}

// The 4 partial sums of x row r, in a fixed order.
template <int R>
inline float sparse_sum4(const float (&acc)[R][4], int r) {
  return (acc[r][0] + acc[r][1]) + (acc[r][2] + acc[r][3]);
}

// y[m][row] from the row's dot product: + bias (fp32 values), * scale + bias (int8 values).  P: a problem
// struct with bias, y, y_sm, values_i8 and scale.
template <class P>
inline void sparse_store(const P& p, int64_t row, int64_t m, float dot) {
  const float bias = p.bias ? p.bias[row] : 0.0f;
  p.y[m * p.y_sm + row] = p.values_i8 ? dot * p.scale[row] + bias : dot + bias;
}

}  // namespace
}  // namespace LLMACCEL_CPU_CAPABILITY
}  // namespace llmaccel
