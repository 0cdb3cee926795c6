// sparse_nm_linear on raw pointers: y = x @ W^T + bias, W N:M-sparse as NMPackedWeight stores it (fp32 / int8).
//
// The weight, as NMPackedWeight stores it (G = ceil(K / m) groups of m
// columns along K, the last one padded with zero columns past K):
//     values[r * values_sn + g * n + j]   slot j of group g of row r (fp32,
//                                         or int8 with scale[r]: W = q * scale[r])
//     indices: b = bits_for(m) bits per slot (1, 2, 4 or 8: the smallest
//     that holds m - 1), slot s = g * n + j in bits [s*b, s*b + b) of row
//     r's bytes idx[r * indices_sn + ...], least significant bit first
//     (2:4: one byte per two groups, a nibble per group, low nibble first)
//     W[r][g * m + index(r, g, j)] = values[r, g * n + j]
// Slots that point past K are padding: the kernels never read x there (the
// format stores 0 in them).  An index >= m (only possible when m is not a
// power of two, and rejected by NMPackedWeight's state check) gives an
// unspecified result but never a read outside x.
// int8 values: y[m][r] = scale[r] * sum_slots x[m][col] * float(q) + bias[r]
// (the scale applied once per output, as int8_linear's weight-only path does).
#pragma once

#include <cstdint>
#include <string>

namespace llmaccel {

struct SparseNMProblem {
  int64_t M, N, K;
  int n, m, bits;  // pattern n:m, index field width
  int64_t groups;  // ceil(K / m)
  const float* x;
  int64_t x_sm;  // row stride of x (k contiguous)
  const float* values;      // fp32 values, or null when values_i8 is set
  const int8_t* values_i8;  // int8 values (then scale is set), or null
  int64_t values_sn;        // row stride of values in elements (>= groups * n)
  const float* scale;       // int8 only: per-row scale [N]
  const uint8_t* idx;
  int64_t idx_sn;  // row stride of the packed indices in bytes (>= ceil(groups * n * bits / 8))
  const float* bias;  // may be null
  float* y;
  int64_t y_sm;  // row stride of y (n contiguous)
  int nthreads;
  // int8 activations (act="dynamic", int8 values only): the entry sets act_int8 and the variant quantizes
  // each x row per token (quantize.h: quantize_row, the codes int8_linear packs) into its scratch, then
  // sets xq (row m at xq + m * xq_sm, in the variant's own column order) and x_scale [M] for its tiles.
  bool act_int8;
  const int8_t* xq;
  int64_t xq_sm;
  const float* x_scale;
};

void sparse_nm_generic(const SparseNMProblem& p);
void sparse_nm_avx2(const SparseNMProblem& p);
void sparse_nm_avx512(const SparseNMProblem& p);  // int8 activations and other patterns: sparse_nm_avx2
void sparse_nm_avx512vbmi(const SparseNMProblem& p);  // 2:4 int8 activations; the rest: sparse_nm_avx512

// Index field width for m columns per group: the smallest of 1, 2, 4, 8 bits that holds m - 1.
constexpr int sparse_nm_index_bits(int64_t m) { return m <= 2 ? 1 : m <= 4 ? 2 : m <= 16 ? 4 : 8; }

// Which kernel runs an N:M linear call: the small-M one (this file: streams the compressed weight once per
// few x rows) or the large-M one (sparse_nm_large.h: x in transposed panels, the weight decoded once).
enum class SparseNMKernel { small_m, large_m };

// Validated entry point of both (errors start with "llmaccel::sparse_nm_linear: " or
// "llmaccel::sparse_nm_large_linear: "); variant "" picks the best of that kernel's family for this CPU.
// values_int8: `values` points at int8 values and `scale` at N fp32 per-row scales; else `values` is fp32
// and scale must be null.
// The int8-activation form (the sparse_linear op's act="dynamic"): each x row is quantized per token,
//     sx[m] = absmax_k |x[m][k]| / 127,   xq[m][k] = clamp(round_half_even(x[m][k] / sx[m]), -127, 127)
//     y[m][r] = float(sum_slots xq[m][col] * q[r][slot]) * sx[m] * scale[r] + bias[r]
// with the sum exact in int32 (K <= kSparseI8MaxK) and the epilogue int8_linear's.  The values must lie in
// [-127, 127] (what llmaccel.sparsity's int8 quantization produces and its formats check): the AVX2 kernel
// multiplies |xq| by sign(xq) * q, and -128 there has no exact negation (a wrong product, never a read out
// of bounds).  Errors start with "llmaccel::sparse_nm_i8_linear: "; small-M kernel family (sparse_nm).
constexpr int64_t kSparseI8MaxK = 133000;  // 127 * 127 * K < 2^31
void sparse_nm_i8_linear(int64_t M, int64_t N, int64_t K, int64_t n, int64_t m, const float* x, int64_t x_sm,
                         const int8_t* values, int64_t values_sn, const uint8_t* idx, int64_t idx_sn,
                         const float* scale, const float* bias, float* y, int64_t y_sm, int nthreads,
                         const std::string& variant);

void sparse_nm_linear(SparseNMKernel kernel, int64_t M, int64_t N, int64_t K, int64_t n, int64_t m, const float* x,
                      int64_t x_sm, const void* values, bool values_int8, int64_t values_sn, const uint8_t* idx,
                      int64_t idx_sn, const float* scale, const float* bias, float* y, int64_t y_sm, int nthreads,
                      const std::string& variant);

}  // namespace llmaccel
