// The sparse_bitmap_linear loop nest and its portable kernel, compiled once per ISA translation unit
// (sparse_bitmap_generic.cpp, sparse_bitmap_avx2.cpp) with that unit's flags; everything is in the unit's
// capability namespace (common.h) and an anonymous namespace, so no AVX2 copy can reach generic code.
//
// Loop nest (the N:M kernel's, sparse_nm_kernel.h): OpenMP threads own contiguous blocks of output
// channels (block ends rounded to 16 so no two threads write one cache line of y) and walk them row after
// row, one forward stream through the bitmap and the values.  Per weight row: first count the bits of its
// bitmap row (ceil(K / 8) bytes, then in L1 for the kernel) against row_offsets, which keeps every read
// of values inside the row (sparse_bitmap.h); then run the x rows in tiles of up to kSbMR, the row's
// compressed bytes staying in L1 across the tiles.  Each output y[m][n] is computed by one call of one
// tile with a fixed summation order that depends on neither the thread count nor the thread's block, so
// results are bit-identical for any nthreads.
#pragma once

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>

#include "common.h"
#include "sparse_bitmap.h"
#include "sparse_rows.h"
#include "tile_table.h"

namespace llmaccel {
inline namespace LLMACCEL_CPU_CAPABILITY {  // see common.h
namespace {

constexpr int kSbMR = 4;  // x rows per tile

// Set bits of a 64-bit word without the popcnt instruction (not part of any ISA level's flags).
inline int64_t sb_popcount64(uint64_t w) {
  w = w - ((w >> 1) & 0x5555555555555555ull);
  w = (w & 0x3333333333333333ull) + ((w >> 2) & 0x3333333333333333ull);
  w = (w + (w >> 4)) & 0x0F0F0F0F0F0F0F0Full;
  return static_cast<int64_t>((w * 0x0101010101010101ull) >> 56);
}

// Set bits of n bytes: the portable row count (the AVX2 unit has a faster one).
inline int64_t sb_count_bits(const uint8_t* b, int64_t n) {
  int64_t c = 0, i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t w;
    std::memcpy(&w, b + i, 8);
    c += sb_popcount64(w);
  }
  for (; i < n; ++i) c += sb_popcount64(b[i]);
  return c;
}

template <class T>
inline const T* sb_values(const SparseBitmapProblem& p);
template <>
inline const float* sb_values<float>(const SparseBitmapProblem& p) { return p.values; }
template <>
inline const int8_t* sb_values<int8_t>(const SparseBitmapProblem& p) { return p.values_i8; }

// The row's bitmap sets exactly row_offsets[row + 1] - row_offsets[row] bits, none past column K.
template <int64_t (*Count)(const uint8_t*, int64_t)>
inline bool sb_row_ok(const SparseBitmapProblem& p, int64_t row) {
  const uint8_t* bm = p.bitmap + row * p.bitmap_sn;
  const int64_t kbytes = llmaccel::ceil_div(p.K, 8);
  if ((p.K & 7) && (bm[kbytes - 1] >> (p.K & 7))) return false;
  return Count(bm, kbytes) == p.row_offsets[row + 1] - p.row_offsets[row];
}

// acc[r][k & 3] += x[m0 + r][8k + j] * value for the set bits j of bitmap bytes [k0, kbytes) of weight row
// `row` (the last byte's bits past K are clear: sb_row_ok), in column order, starting at value `pos`: the
// portable kernel, and the tail of the vector one.
template <class T, int R>
inline void sb_scalar_bytes(const SparseBitmapProblem& p, int64_t row, int64_t m0, int64_t k0, int64_t pos,
                            float (&acc)[R][4]) {
  const T* v = sb_values<T>(p);
  const uint8_t* bm = p.bitmap + row * p.bitmap_sn;
  const float* xr[R];
  for (int r = 0; r < R; ++r) xr[r] = p.x + (m0 + r) * p.x_sm;
  const int64_t kbytes = llmaccel::ceil_div(p.K, 8);
  for (int64_t k = k0; k < kbytes; ++k) {
    for (unsigned b = bm[k]; b; b &= b - 1) {
      const int64_t col = 8 * k + __builtin_ctz(b);
      const float w = static_cast<float>(v[pos++]);
      for (int r = 0; r < R; ++r) acc[r][k & 3] += xr[r][col] * w;
    }
  }
}

// A tile's run(): its run_t<T> for the problem's value type (fp32 or int8).
template <class Tile>
inline void sb_on_values(const SparseBitmapProblem& p, int64_t row, int64_t m0) {
  if (p.values_i8)
    Tile::template run_t<int8_t>(p, row, m0);
  else
    Tile::template run_t<float>(p, row, m0);
}

// The same for a tile whose plain vector load reads kLoad values from the current one: run_t<T, true> where
// kLoad values past the row's last one still lie inside the buffer (every row but the last few), else
// run_t<T, false> (bounded loads).
template <class Tile, int64_t kLoad>
inline void sb_on_values_bounded(const SparseBitmapProblem& p, int64_t row, int64_t m0) {
  const bool safe = p.row_offsets[row + 1] + kLoad <= p.nnz;
  if (p.values_i8)
    safe ? Tile::template run_t<int8_t, true>(p, row, m0) : Tile::template run_t<int8_t, false>(p, row, m0);
  else
    safe ? Tile::template run_t<float, true>(p, row, m0) : Tile::template run_t<float, false>(p, row, m0);
}

// The portable tile: scalar, one multiply-add per kept weight, 4 partial sums per x row.
template <int R, int C>
struct SbScalarTile {
  template <class T>
  static void run_t(const SparseBitmapProblem& p, int64_t row, int64_t m0) {
    float acc[R][4] = {};
    sb_scalar_bytes<T, R>(p, row, m0, 0, p.row_offsets[row], acc);
    for (int r = 0; r < R; ++r) sparse_store(p, row, m0 + r, sparse_sum4<R>(acc, r));
  }
  static void run(const SparseBitmapProblem& p, int64_t row, int64_t m0) { sb_on_values<SbScalarTile>(p, row, m0); }
};

// The loop nest (file comment) over the tiles of `Tile<R, 1>`, R = 1 .. kSbMR x rows; returns the first row
// whose bitmap disagrees with row_offsets, or -1.  Count = nullptr: no bitmap to check (the column-index form).
template <template <int, int> class Tile, int64_t (*Count)(const uint8_t*, int64_t)>
int64_t sb_run(const SparseBitmapProblem& p) {
  static constexpr TileTable<kSbMR, 1, Tile> table;
  std::atomic<int64_t> first_bad{p.N};
#pragma omp parallel num_threads(p.nthreads)
  {
    const int t = omp_get_thread_num(), T = omp_get_num_threads();
    int64_t n0, n1;
    sparse_row_block(p.N, t, T, &n0, &n1);
    for (int64_t row = n0; row < n1; ++row) {
      if constexpr (Count != nullptr) {
        if (!sb_row_ok<Count>(p, row)) {  // skip it (no read past its values); the entry raises
          int64_t seen = first_bad.load();
          while (row < seen && !first_bad.compare_exchange_weak(seen, row)) {
          }
          continue;
        }
      }
      for (int64_t m0 = 0; m0 < p.M; m0 += kSbMR) {
        const int R = static_cast<int>(std::min<int64_t>(kSbMR, p.M - m0));
        table.fn[R - 1][0](p, row, m0);
      }
    }
  }
  const int64_t bad = first_bad.load();
  return bad < p.N ? bad : -1;
}

// ---------------------------------------------------------------------------------------------------------
// The column-index form (p.by_index, sparse_bitmap.h): no bitmap, one index per kept value.

// acc[r][t & 3] += x[m0 + r][min(cols[t], K - 1)] * value for kept values t in [t0, t1) of one weight row: the
// portable kernel and the tail of the vector one.
template <class T, int R>
inline void si_scalar(const SparseBitmapProblem& p, int64_t m0, int64_t t0, int64_t t1, float (&acc)[R][4]) {
  const T* v = sb_values<T>(p);
  const float* xr[R];
  for (int r = 0; r < R; ++r) xr[r] = p.x + (m0 + r) * p.x_sm;
  const int64_t kmax = p.K - 1;
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t col = std::min<int64_t>(p.cols[t], kmax);
    const float w = static_cast<float>(v[t]);
    for (int r = 0; r < R; ++r) acc[r][t & 3] += xr[r][col] * w;
  }
}

template <int R, int C>
struct SiScalarTile {
  template <class T>
  static void run_t(const SparseBitmapProblem& p, int64_t row, int64_t m0) {
    float acc[R][4] = {};
    si_scalar<T, R>(p, m0, p.row_offsets[row], p.row_offsets[row + 1], acc);
    for (int r = 0; r < R; ++r) sparse_store(p, row, m0 + r, sparse_sum4<R>(acc, r));
  }
  static void run(const SparseBitmapProblem& p, int64_t row, int64_t m0) { sb_on_values<SiScalarTile>(p, row, m0); }
};

// The loop nest of sb_run without the bitmap check (the indices are clamped instead).
template <template <int, int> class Tile>
void si_run(const SparseBitmapProblem& p) {
  sb_run<Tile, nullptr>(p);
}

// A unit's entry (sparse_bitmap.h): the column-index form on IndexTile, else the bitmap form on ByteTile with
// the row check Count; returns the first row whose bitmap disagrees with row_offsets, or -1.
template <template <int, int> class ByteTile, template <int, int> class IndexTile,
          int64_t (*Count)(const uint8_t*, int64_t)>
int64_t sb_entry(const SparseBitmapProblem& p) {
  if (p.by_index) {
    si_run<IndexTile>(p);
    return -1;
  }
  return sb_run<ByteTile, Count>(p);
}

}  // namespace
}  // namespace LLMACCEL_CPU_CAPABILITY
}  // namespace llmaccel
