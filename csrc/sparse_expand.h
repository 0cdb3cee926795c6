// Dense expansion of the compressed sparse weights (llmaccel.sparsity's N:M and bitmap formats) into a
// row-major fp32 [N, K] buffer, for the sparse_linear op's large-M route: where a sparse kernel would be
// slower than the dense GEMM (ops/sparse_linear.py's crossover table), the op expands the weight once per
// call (memory-bound, ~N*K*4 bytes written) and runs MKL's sgemm on it.
//
//     out[r][c] = W[r][c]                (fp32 values)
//     out[r][c] = float(q[r][c]) * scale[r]   (int8 values: the same product the formats' to_dense() takes)
//
// The layouts are those of csrc/sparse_nm.h (N:M) and llmaccel/sparsity/bitmap.py (bitmap: uint8
// [N, ceil(K/8)] LSB first, values packed row by row, row_offsets int64 [N + 1]).  Both entries check what
// they are handed: no write outside out, no read outside values (a bitmap row whose popcount differs from its
// row_offsets span raises).  Baseline code only: the work is a memory-bound scatter.
#pragma once

#include <cstdint>

namespace llmaccel {

void sparse_nm_expand(int64_t N, int64_t K, int64_t n, int64_t m, const void* values, bool values_int8,
                      int64_t values_sn, const uint8_t* idx, int64_t idx_sn, const float* scale, float* out,
                      int64_t out_sn, int nthreads);

void sparse_bitmap_expand(int64_t N, int64_t K, const uint8_t* bitmap, int64_t bitmap_sn, const void* values,
                          bool values_int8, int64_t nnz, const int64_t* row_offsets, const float* scale, float* out,
                          int64_t out_sn, int nthreads);

}  // namespace llmaccel
