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
#include <cstdlib>
#include <cstring>
#include <memory>

#include "common.h"
#include "memory.h"
#include "quantize.h"
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
// group and slot order: the portable kernel, and the scalar tail of the vector ones.  Float x (A = float,
// the value converted) or int8 codes (X = int8_t, A = int32_t: exact, K <= kSparseI8MaxK); xr[r] is x row
// m0 + r in natural column order (every layout keeps it past its last vector block).
template <class T, class X, class A, int R>
inline void sn_groups(const SparseNMProblem& p, int64_t row, const X* const (&xr)[R], int64_t g0, A (&acc)[R][4]) {
  const T* v = sn_values<T>(p, row);
  const uint8_t* ix = p.idx + row * p.idx_sn;
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
      const A w = static_cast<A>(v[s]);
      for (int r = 0; r < R; ++r) acc[r][g & 3] += static_cast<A>(xr[r][col]) * w;
    }
  }
}

template <class T, int R>
inline void sn_scalar_groups(const SparseNMProblem& p, int64_t row, int64_t m0, int64_t g0, float (&acc)[R][4]) {
  const float* xr[R];
  for (int r = 0; r < R; ++r) xr[r] = p.x + (m0 + r) * p.x_sm;
  sn_groups<T>(p, row, xr, g0, acc);
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

// Decode (M = 1): RW weight rows read side by side, one from each of RW equal segments of the thread's rows:
// Tile<1, RW>::run_step(p, row, 0, seg) reads rows row, row + seg, .., row + (RW - 1) seg (giving each the
// arithmetic it has in Tile<1, 1>), for row = the first seg rows of the range; the last (n1 - n0) % RW rows
// run through Tile<1, 1>.  Why: on the Sapphire Rapids class Xeon one thread walking one sequential stream
// draws 14-16 GB/s from DRAM (2 threads), several streams in different pages 20-30
// (bench/read_streams_probe.cpp); prefetching rows ahead does not get there.  Why rows far apart rather than
// adjacent: adjacent rows of a short packed row (2:4 int8 values: 2 KiB a row at K = 4096) share pages, so
// they are still about one stream; 4 adjacent rows of the W8A8 tile ran 0.95x the row-after-row walk, 4 rows
// a segment apart 1.21x (one thread, 8 layers beyond the L3, same process).  (Adjacent rows in lockstep were
// measured on the bitmap kernels, which have their own loop nest, and not kept: the bitmap form 1.01x, the
// column-index form 0.71x.)  M > 1, or RW = 1: sn_run.
template <template <int, int> class Tile, int RW>
void sn_run_lockstep(const SparseNMProblem& p) {
  if constexpr (RW <= 1) {
    sn_run<Tile>(p);
  } else {
    if (p.M != 1) {
      sn_run<Tile>(p);
      return;
    }
#pragma omp parallel num_threads(p.nthreads)
    {
      int64_t n0, n1;
      sparse_row_block(p.N, omp_get_thread_num(), omp_get_num_threads(), &n0, &n1);
      const int64_t seg = (n1 - n0) / RW;
      for (int64_t row = n0; row < n0 + seg; ++row) Tile<1, RW>::run_step(p, row, 0, seg);
      for (int64_t row = n0 + RW * seg; row < n1; ++row) Tile<1, 1>::run(p, row, 0);
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// int8 activations (act_int8, sparse_nm.h): the same loop nest over x rows quantized once per call.

// The int8-activation sum of x rows m0 .. m0 + R - 1 (codes xq) over groups [g0, groups): exact int32.
template <int R>
inline void sn_scalar_groups_i8(const SparseNMProblem& p, int64_t row, int64_t m0, int64_t g0, int32_t (&acc)[R]) {
  const int8_t* xr[R];
  for (int r = 0; r < R; ++r) xr[r] = p.xq + (m0 + r) * p.xq_sm;
  int32_t part[R][4] = {};
  sn_groups<int8_t>(p, row, xr, g0, part);
  for (int r = 0; r < R; ++r) acc[r] += (part[r][0] + part[r][1]) + (part[r][2] + part[r][3]);
}

// y[m][row] = float(acc) * sx[m] * scale[row] + bias[row]: int8_linear's epilogue, in its order.
inline void sparse_store_i8(const SparseNMProblem& p, int64_t row, int64_t m, int32_t acc) {
  const float bias = p.bias ? p.bias[row] : 0.0f;
  p.y[m * p.y_sm + row] = static_cast<float>(acc) * p.x_scale[m] * p.scale[row] + bias;
}

// The portable int8-activation tile: any N:M, scalar, one int32 sum per x row.
template <int R, int C>
struct SnScalarI8Tile {
  static void run(const SparseNMProblem& p, int64_t row, int64_t m0) {
    int32_t acc[R] = {};
    sn_scalar_groups_i8<R>(p, row, m0, 0, acc);
    for (int r = 0; r < R; ++r) sparse_store_i8(p, row, m0 + r, acc[r]);
  }
};

// act_int8: quantizes every x row per token into scratch taken before any parallel region (its
// std::bad_alloc reaches Python as MemoryError), lays each row out in the tile's column order (Arrange:
// codes of one row, K, destination; nullptr: natural order, quantized straight into place), then runs the
// loop nest on the codes (RW > 1: the decode's lockstep walk, sn_run_lockstep).
template <template <int, int> class Tile, void (*Arrange)(const int8_t*, int64_t, int8_t*) = nullptr, int RW = 1>
void sn_run_i8(const SparseNMProblem& p) {
  const int64_t row_bytes = llmaccel::round_up(p.K, 64);
  const int64_t tmp_rows = Arrange ? p.nthreads : 0;  // one natural-order row per thread to arrange from
  struct Free {
    void operator()(void* q) const { std::free(q); }
  };
  std::unique_ptr<void, Free> buf(llmaccel::scratch_alloc((p.M + tmp_rows) * row_bytes + 4 * p.M));
  int8_t* codes = static_cast<int8_t*>(buf.get());
  int8_t* tmp = codes + p.M * row_bytes;
  float* sx = reinterpret_cast<float*>(tmp + tmp_rows * row_bytes);
#pragma omp parallel for num_threads(p.nthreads) schedule(static)
  for (int64_t m = 0; m < p.M; ++m) {
    if constexpr (Arrange == nullptr) {
      sx[m] = quantize_row(p.x + m * p.x_sm, p.K, codes + m * row_bytes);
    } else {
      int8_t* t = tmp + omp_get_thread_num() * row_bytes;
      sx[m] = quantize_row(p.x + m * p.x_sm, p.K, t);
      Arrange(t, p.K, codes + m * row_bytes);
    }
  }
  SparseNMProblem q = p;
  q.xq = codes, q.xq_sm = row_bytes, q.x_scale = sx;
  sn_run_lockstep<Tile, RW>(q);
}

}  // namespace
}  // namespace LLMACCEL_CPU_CAPABILITY
}  // namespace llmaccel
