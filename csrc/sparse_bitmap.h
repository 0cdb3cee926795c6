// sparse_bitmap_linear on raw pointers: y = x @ W^T + bias, W unstructured-sparse as BitmapWeight stores it
// (llmaccel/sparsity/bitmap.py), fp32 or int8 values.
//
// The weight [N, K]:
//     bitmap[r * bitmap_sn + i]   bit j (LSB first) = W[r][8i + j] is kept; ceil(K / 8) bytes per row,
//                                 the bits past column K clear
//     values[row_offsets[r] + t]  the t-th kept value of row r, by column (fp32, or int8 with
//                                 scale[r]: W = q * scale[r]); nnz values in all
//     row_offsets[N + 1]          int64, non-decreasing, row_offsets[N] <= nnz
//     W[r][col] = values[row_offsets[r] + popcount(bits of row r before col)]  where the bit is set, else 0
// int8 values: y[m][r] = scale[r] * sum_col x[m][col] * float(q) + bias[r] (the scale once per output, as
// the N:M kernel and int8_linear's weight-only path do).
//
// Reads stay inside the buffers whatever the bitmap holds: the entry checks row_offsets (non-decreasing,
// inside [0, nnz]); the kernels count each row's bits before using them and skip a row whose count is not
// row_offsets[r + 1] - row_offsets[r] or that has a bit set past K, which the entry then reports
// (ValueError naming bitmap and row_offsets).
#pragma once

#include <cstdint>
#include <string>

namespace llmaccel {

struct SparseBitmapProblem {
  int64_t M, N, K;
  const float* x;
  int64_t x_sm;             // row stride of x (k contiguous)
  const float* values;      // fp32 values, or null when values_i8 is set
  const int8_t* values_i8;  // int8 values (then scale is set), or null
  int64_t nnz;              // values in the buffer: no read reaches values[nnz] or beyond
  const float* scale;       // int8 only: per-row scale [N]
  const uint8_t* bitmap;
  int64_t bitmap_sn;  // row stride of the bitmap in bytes (>= ceil(K / 8))
  const int64_t* row_offsets;
  const float* bias;  // may be null
  float* y;
  int64_t y_sm;  // row stride of y (n contiguous)
  int nthreads;
  // The column-index form (sparse_bitmap_index_linear): cols[t] = the column of values[t] (uint16, in column
  // order per row, what the bitmap's set bits say), read instead of the bitmap when by_index is set (cols may
  // be null when nnz is 0, so the flag, not the pointer, says which form runs).
  bool by_index;
  const uint16_t* cols;
};

// Both return -1, or the first row whose bitmap disagrees with row_offsets (popcount, or a bit past K);
// such rows are skipped (their outputs are left unwritten).
// With p.by_index set they run the column-index form (and return -1: nothing to cross-check).
int64_t sparse_bitmap_generic(const SparseBitmapProblem& p);
int64_t sparse_bitmap_avx2(const SparseBitmapProblem& p);
int64_t sparse_bitmap_avx512(const SparseBitmapProblem& p);

// The column-index form of the same weight (for sparse weights: at 10 % density the bitmap costs 10 bits per
// kept value and, worse, a fixed amount of work per bitmap byte, while a column index costs 16 bits and work
// per kept value only):
//     y[m][r] = sum_{t in [row_offsets[r], row_offsets[r+1])} x[m][min(cols[t], K - 1)] * values[t]  (+ int8
//     scale, + bias as above)
// cols comes from the bitmap (llmaccel.sparsity.cpu_bitmap.column_indices: it checks it against
// row_offsets); the kernels clamp every index to K - 1, so corrupt indices give a wrong result, never a read
// outside x.  K <= 65536.  Fixed summation order: results bit-identical for any nthreads.  Errors start with
// "llmaccel::sparse_bitmap_index_linear: ".
constexpr int64_t kSparseIndexMaxK = 65536;
void sparse_bitmap_index_linear(int64_t M, int64_t N, int64_t K, const float* x, int64_t x_sm, const void* values,
                                bool values_int8, int64_t nnz, const uint16_t* cols, const int64_t* row_offsets,
                                const float* scale, const float* bias, float* y, int64_t y_sm, int nthreads,
                                const std::string& variant);

// Validated entry point; variant "" picks the best for this CPU.
// values_int8: `values` points at int8 values and `scale` at N fp32 per-row scales; else `values` is fp32
// and scale must be null.
void sparse_bitmap_linear(int64_t M, int64_t N, int64_t K, const float* x, int64_t x_sm, const void* values,
                          bool values_int8, int64_t nnz, const uint8_t* bitmap, int64_t bitmap_sn,
                          const int64_t* row_offsets, const float* scale, const float* bias, float* y,
                          int64_t y_sm, int nthreads, const std::string& variant);

}  // namespace llmaccel
