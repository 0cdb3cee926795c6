// sparse_nm_linear: y[M, N] = x[M, K] @ W[N, K]^T + bias for an N:M-sparse W stored as kept values plus packed per-group column indices (llmaccel/sparsity/nm_packed.py), fp32, on raw pointers.
//
// The weight, as NMPackedWeight stores it (G = ceil(K / m) groups of m
// columns along K, the last one padded with zero columns past K):
//     values[r * values_sn + g * n + j]   slot j of group g of row r (fp32)
//     indices: b = bits_for(m) bits per slot (1, 2, 4 or 8: the smallest
//     that holds m - 1), slot s = g * n + j in bits [s*b, s*b + b) of row
//     r's bytes idx[r * indices_sn + ...], least significant bit first
//     (2:4: one byte per two groups, a nibble per group, low nibble first)
//     W[r][g * m + index(r, g, j)] = values[r, g * n + j]
// Slots that point past K are padding: the kernels never read x there (the
// format stores 0 in them).  An index >= m (only possible when m is not a
// power of two, and rejected by NMPackedWeight's state check) gives an
// unspecified result but never a read outside x.
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
  const float* values;
  int64_t values_sn;  // row stride of values (>= groups * n)
  const uint8_t* idx;
  int64_t idx_sn;  // row stride of the packed indices in bytes (>= ceil(groups * n * bits / 8))
  const float* bias;  // may be null
  float* y;
  int64_t y_sm;  // row stride of y (n contiguous)
  int nthreads;
};

void sparse_nm_generic(const SparseNMProblem& p);
void sparse_nm_avx2(const SparseNMProblem& p);

// Index field width for m columns per group: the smallest of 1, 2, 4, 8 bits that holds m - 1.
constexpr int sparse_nm_index_bits(int64_t m) { return m <= 2 ? 1 : m <= 4 ? 2 : m <= 16 ? 4 : 8; }

// Validated entry point; variant "" picks the best for this CPU.
void sparse_nm_linear(int64_t M, int64_t N, int64_t K, int64_t n, int64_t m, const float* x, int64_t x_sm,
                      const float* values, int64_t values_sn, const uint8_t* idx, int64_t idx_sn, const float* bias,
                      float* y, int64_t y_sm, int nthreads, const std::string& variant);

}  // namespace llmaccel
