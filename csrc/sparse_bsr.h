// sparse_bsr_linear on raw pointers: y = x @ W^T + bias, W block-sparse as BSRWeight stores it (fp32 / int8).
//
// The weight [N, K] is tiled by (bh, bw) into R = ceil(N / bh) tile rows and
// T = ceil(K / bw) tile columns; only the kept tiles are stored, dense:
//     values[t * values_st + o * values_sr + k]   tile t, its row o < bh, column k < bw
//                                                  (fp32, or int8 with scale[n]: W = q * scale[n])
//     crow[i] .. crow[i+1]-1                       the tiles of tile row i (int64, R + 1 entries)
//     col[t]                                       tile t's tile column, in [0, T) (int32)
//     W[i*bh + o][col[t]*bw + k] = values[t][o][k]
// Edge tiles (past N or K) hold padding the kernel never uses: it reads x
// only at columns < K and writes y only at outputs < N.
// int8 values: y[m][n] = (sum_kept x[m][k] * float(q[n][k])) * scale[n] + bias[n]
// (the scale applied once per output, as the N:M kernel does).
//
// The entry validates everything it is handed, data included: crow must run
// from 0 to nnzb without decreasing and every col must lie in [0, T), so a
// corrupt index raises ValueError instead of reading out of bounds.
#pragma once

#include <cstdint>
#include <string>

namespace llmaccel {

struct SparseBSRProblem {
  int64_t M, N, K;
  int64_t bh, bw;          // tile size
  int64_t R, T;            // tile grid: ceil(N / bh) x ceil(K / bw)
  int64_t max_row_tiles;   // the most tiles any tile row keeps (sizes the packing buffers)
  const float* x;
  int64_t x_sm;             // row stride of x (k contiguous)
  const float* values;      // fp32 tiles, or null when values_i8 is set
  const int8_t* values_i8;  // int8 tiles (then scale is set), or null
  int64_t values_st, values_sr;  // tile stride and row-in-tile stride, elements (columns contiguous)
  const float* scale;            // int8 only: per-output scale [N]
  const int64_t* crow;           // [R + 1]
  const int32_t* col;            // [nnzb]
  const float* bias;             // may be null
  float* y;
  int64_t y_sm;  // row stride of y (n contiguous)
  int nthreads;
};

void sparse_bsr_generic(const SparseBSRProblem& p);
void sparse_bsr_avx2(const SparseBSRProblem& p);
void sparse_bsr_avx512(const SparseBSRProblem& p);

// Validated entry point; variant "" picks the best for this CPU.
// values_int8: `values` points at int8 tiles and `scale` at N fp32 per-row
// scales; else `values` is fp32 and scale must be null.
void sparse_bsr_linear(int64_t M, int64_t N, int64_t K, int64_t bh, int64_t bw, int64_t nnzb, const float* x,
                       int64_t x_sm, const void* values, bool values_int8, int64_t values_st, int64_t values_sr,
                       const int64_t* crow, const int32_t* col, const float* scale, const float* bias, float* y,
                       int64_t y_sm, int nthreads, const std::string& variant);

}  // namespace llmaccel
