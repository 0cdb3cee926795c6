// The sparse_nm_linear loop nest and its portable N:M kernel, compiled once
// per ISA translation unit (sparse_nm_generic.cpp, sparse_nm_avx2.cpp) with
// that unit's flags; everything is in the unit's capability namespace
// (common.h) and an anonymous namespace, so no AVX2 copy can reach generic
// code.
//
// Loop nest: OpenMP threads own contiguous blocks of output channels (rows
// of the packed weight; block ends rounded to 16 so no two threads write one
// cache line of y), walk them row after row (one forward stream through
// values and indices), and for each weight row run the x rows in tiles of up
// to kSnMR (the weight row stays in L1 across the tiles).  Each output y[m][n]
// is computed by one call of one tile with a fixed summation order that does
// not depend on the thread count or on the thread's block, so results are
// bit-identical for any nthreads.
#pragma once

#include <omp.h>

#include <algorithm>
#include <cstdint>

#include "common.h"
#include "sparse_nm.h"
#include "sparse_rows.h"
#include "tile_table.h"

namespace llmaccel {
inline namespace LLMACCEL_CPU_CAPABILITY {  // see common.h
namespace {

constexpr int kSnMR = 4;  // x rows per tile

// Groups [0, g_safe) have every possible index field (0 .. 2^bits - 1) inside K, so their slots need no
// bounds test; later groups (the padded tail group, and any group a corrupt index >= m could push past K)
// skip slots whose column is >= K.
inline int64_t sn_safe_groups(const SparseNMProblem& p) {
  const int64_t maxidx = (int64_t(1) << p.bits) - 1;
  if (p.K <= maxidx) return 0;
  return std::min<int64_t>(p.groups, (p.K - 1 - maxidx) / p.m + 1);
}

// The weight row's values: fp32, or int8 (converted to float in registers; the scale is applied per output).
template <class T>
inline const T* sn_values(const SparseNMProblem& p, int64_t row);
template <>
inline const float* sn_values<float>(const SparseNMProblem& p, int64_t row) { return p.values + row * p.values_sn; }
template <>
inline const int8_t* sn_values<int8_t>(const SparseNMProblem& p, int64_t row) {
  return p.values_i8 + row * p.values_sn;
}

// acc[r][g & 3] += x[m0 + r][col] * value over the slots of groups [g0, groups) of weight row `row`, in
// group and slot order: the portable kernel, and the scalar tail of the vector ones.
template <class T, int R>
inline void sn_scalar_groups(const SparseNMProblem& p, int64_t row, int64_t m0, int64_t g0, float (&acc)[R][4]) {
  const T* v = sn_values<T>(p, row);
  const uint8_t* ix = p.idx + row * p.idx_sn;
  const float* xr[R];
  for (int r = 0; r < R; ++r) xr[r] = p.x + (m0 + r) * p.x_sm;
  const int n = p.n, b = p.bits;
  const unsigned mask = (1u << b) - 1u;
  const int64_t m = p.m, K = p.K, g_safe = sn_safe_groups(p);
  for (int64_t g = g0; g < p.groups; ++g) {
    const int64_t base = g * m;
    const bool safe = g < g_safe;
    for (int j = 0; j < n; ++j) {
      const int64_t s = g * n + j, bit = s * b;
      const int64_t col = base + ((static_cast<unsigned>(ix[bit >> 3]) >> (bit & 7)) & mask);
      if (!safe && col >= K) continue;  // a padding column: never read x there
      const float w = static_cast<float>(v[s]);
      for (int r = 0; r < R; ++r) acc[r][g & 3] += xr[r][col] * w;
    }
  }
}

// The portable tile: any N:M, fp32 or int8 values, scalar, 4 partial sums per x row.
template <int R, int C>
struct SnScalarTile {
  template <class T>
  static void run_t(const SparseNMProblem& p, int64_t row, int64_t m0) {
    float acc[R][4] = {};
    sn_scalar_groups<T, R>(p, row, m0, 0, acc);
    for (int r = 0; r < R; ++r) sparse_store(p, row, m0 + r, sparse_sum4<R>(acc, r));
  }
  static void run(const SparseNMProblem& p, int64_t row, int64_t m0) {
    if (p.values_i8)
      run_t<int8_t>(p, row, m0);
    else
      run_t<float>(p, row, m0);
  }
};

// The loop nest (file comment) over the tiles of `Tile<R, 1>`, R = 1 .. kSnMR x rows.
template <template <int, int> class Tile>
void sn_run(const SparseNMProblem& p) {
  static constexpr TileTable<kSnMR, 1, Tile> table;
#pragma omp parallel num_threads(p.nthreads)
  {
    const int t = omp_get_thread_num(), T = omp_get_num_threads();
    int64_t n0, n1;
    sparse_row_block(p.N, t, T, &n0, &n1);
    for (int64_t row = n0; row < n1; ++row)
      for (int64_t m0 = 0; m0 < p.M; m0 += kSnMR) {
        const int R = static_cast<int>(std::min<int64_t>(kSnMR, p.M - m0));
        table.fn[R - 1][0](p, row, m0);
      }
  }
}

}  // namespace
}  // namespace LLMACCEL_CPU_CAPABILITY
}  // namespace llmaccel
