// The sparse_bsr_linear loop nest and its register-blocked micro-kernel, written once over a small
// vector-traits layer V and compiled per ISA translation unit (sparse_bsr_generic.cpp: 4-float plain
// arrays the compiler maps to SSE; sparse_bsr_avx2.cpp: __m256 with FMA; sparse_bsr_avx512.cpp: __m512).  Everything is in the unit's
// capability namespace (common.h) and an anonymous namespace, so no AVX2 copy can reach generic code.
//
// V provides: reg, W (floats per reg), zero(), load(p), store(p, v), set1(f), fma(a, b, c) = a * b + c,
// add(a, b), mul(a, b).
//
// Work: y[m][i*bh + o] = sum over tile row i's kept tiles t, in storage order, and over their columns
// k < kw(t) = min(bw, K - col[t]*bw), in order, of x[m][col[t]*bw + k] * W_t[o][k]; then * scale (int8),
// then + bias.  Empty tiles cost nothing; a tile row with none gives bias only.
//
// Loop nest: OpenMP hands out work items (block of x rows, tile row i) dynamically, x-block major.  A thread
// starting a tile row packs its kept tiles into its own buffer (allocated before the parallel region: no
// exception may leave it), transposed to k-major and cut into panels of 2W outputs:
//     packed[panel][kk][j] = W[i*bh + panel*2W + j][the kk-th kept column of the row]   (int8 converted here)
// so the micro-kernel loads contiguous vectors of outputs, and the whole packed tile row (52 KB for a
// 4096-wide row at 10 % density, 32 x 32 tiles) stays in L2 while the x rows of the item stream past it,
// 48 at a time (kBsrChunk micro-tiles) so one panel of it stays in L1 meanwhile.
// x is packed once per call by tile column and micro-tile of MR = 6 rows, k-major (pack_x), so both
// operands stream.
// The micro-kernel holds MR = 6 x rows x 2 vectors of outputs (12 accumulators; FMA latency 4 x 2 ports
// needs >= 8 chains), broadcasts x[m][k] and FMAs it with the packed row of outputs, over every kept tile
// of the row, and writes y once.  Outputs past the tile row's valid height (the bottom edge tile) are
// computed on zero padding and never stored; x is never read at a column >= K.
//
// Each output is produced by one micro-kernel call whose summation order (tiles in storage order, k
// ascending, one accumulator lane) does not depend on the thread count or on which thread runs it: results
// are bit-identical for any nthreads.
#pragma once

#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <vector>

#include "common.h"
#include "memory.h"
#include "sparse_bsr.h"
#include "tile_table.h"

namespace llmaccel {
inline namespace LLMACCEL_CPU_CAPABILITY {  // see common.h
namespace {

constexpr int kBsrMR = 6;  // x rows per micro-tile
constexpr int64_t kBsrItemRows = 42 * kBsrMR;  // most x rows per work item, 252 (loop nest)
constexpr int64_t kBsrChunk = 8;  // micro-tiles per chunk of the loop nest (x rows 48 at a time)

// One packed tile row, as the micro-kernels read it.
struct BsrRow {
  const SparseBSRProblem* p;
  int64_t row;           // tile row i
  int64_t t0, t1;        // its tiles [t0, t1)
  int64_t kk;            // kept columns of the row (sum of kw over its tiles)
  int64_t valid;         // outputs of the row inside N: min(bh, N - i*bh)
  const float* packed;   // panels of 2W floats x kk, the last one possibly W wide
  const float* bias;     // [valid rounded up to 2W], zero padded; null without bias
  const float* scale;    // the same for the int8 scales; null for fp32 values
  int64_t xcol_stride;   // floats between tile columns in packed x (pack_x)
};

template <class V>
struct BsrKernel {
  static constexpr int W = V::W, NR = 2 * W;

  // Tile<R, C>: R x rows (m0 ..) x C vectors of outputs (panel `panel`), over every kept column of the row;
  // xpanel = micro-tile m0 / MR of packed x at tile column 0 (pack_x), so both operands stream contiguously.
  template <int R, int C>
  struct Tile {
    static void run(const BsrRow& c, const float* xpanel, int64_t m0, int64_t panel) {
      const SparseBSRProblem& p = *c.p;
      const int64_t o0 = panel * NR;
      typename V::reg acc[R][C];
      for (int r = 0; r < R; ++r)
        for (int v = 0; v < C; ++v) acc[r][v] = V::zero();
      const float* b = c.packed + o0 * c.kk;  // earlier panels are all NR wide
      for (int64_t t = c.t0; t < c.t1; ++t) {
        const int64_t x0 = int64_t(p.col[t]) * p.bw, kw = std::min(p.bw, p.K - x0);
        const float* xs = xpanel + p.col[t] * c.xcol_stride;
        for (int64_t k = 0; k < kw; ++k, b += C * W, xs += kBsrMR) {
          typename V::reg w[C];
          for (int v = 0; v < C; ++v) w[v] = V::load(b + v * W);
          for (int r = 0; r < R; ++r) {
            const typename V::reg xb = V::set1(xs[r]);
            for (int v = 0; v < C; ++v) acc[r][v] = V::fma(xb, w[v], acc[r][v]);
          }
        }
      }
      store(c, m0, o0, acc);
    }

    // y = acc (* scale) (+ bias), only at outputs < valid; the same two roundings on the vector and tail paths.
    static void store(const BsrRow& c, int64_t m0, int64_t o0, typename V::reg (&acc)[R][C]) {
      const SparseBSRProblem& p = *c.p;
      const int64_t nv = std::min<int64_t>(C * W, c.valid - o0);
      for (int r = 0; r < R; ++r) {
        float* yr = p.y + (m0 + r) * p.y_sm + c.row * p.bh + o0;
        if (nv == C * W) {
          for (int v = 0; v < C; ++v) {
            typename V::reg s = acc[r][v];
            if (c.scale) s = V::mul(s, V::load(c.scale + o0 + v * W));
            if (c.bias) s = V::add(s, V::load(c.bias + o0 + v * W));
            V::store(yr + v * W, s);
          }
        } else {
          float tmp[C * W];
          for (int v = 0; v < C; ++v) V::store(tmp + v * W, acc[r][v]);
          for (int64_t j = 0; j < nv; ++j) {
            float s = tmp[j];
            if (c.scale) s = s * c.scale[o0 + j];
            if (c.bias) s = s + c.bias[o0 + j];
            yr[j] = s;
          }
        }
      }
    }
  };

  // Packs tile row `row` into buf (file comment); returns its description.  buf holds
  // round_up(bh, W) * max_row_tiles * bw + 2 * (round_up(bh, W) + NR) floats (>= what one row needs: the
  // panels round_up(valid, W) * kk, the bias and scale copies round_up(valid, NR) each).
  template <class T>
  static BsrRow pack(const SparseBSRProblem& p, const T* values, int64_t row, float* buf) {
    BsrRow c{};
    c.p = &p, c.row = row, c.t0 = p.crow[row], c.t1 = p.crow[row + 1];
    c.valid = std::min(p.bh, p.N - row * p.bh);
    for (int64_t t = c.t0; t < c.t1; ++t) c.kk += std::min(p.bw, p.K - int64_t(p.col[t]) * p.bw);
    const int64_t height = round_up(c.valid, NR);  // panels cover [0, height); a last panel of W is enough
    const int64_t panels = ceil_div(c.valid, NR);
    float* packed = buf;
    for (int64_t pn = 0; pn < panels; ++pn) {
      const int64_t o0 = pn * NR, width = std::min<int64_t>(NR, round_up(c.valid, W) - o0);
      float* dst = packed + o0 * c.kk;
      int64_t kpos = 0;
      for (int64_t t = c.t0; t < c.t1; ++t) {
        const int64_t kw = std::min(p.bw, p.K - int64_t(p.col[t]) * p.bw);
        const T* tile = values + t * p.values_st;
        for (int64_t j = 0; j < width; ++j) {
          float* d = dst + kpos * width + j;
          if (o0 + j < c.valid) {
            const T* src = tile + (o0 + j) * p.values_sr;
            for (int64_t k = 0; k < kw; ++k) d[k * width] = static_cast<float>(src[k]);
          } else {
            for (int64_t k = 0; k < kw; ++k) d[k * width] = 0.0f;
          }
        }
        kpos += kw;
      }
    }
    c.packed = packed;
    float* tail = packed + round_up(c.valid, W) * c.kk;
    const int64_t n0 = row * p.bh;
    if (p.bias) {
      for (int64_t o = 0; o < height; ++o) tail[o] = o < c.valid ? p.bias[n0 + o] : 0.0f;
      c.bias = tail;
      tail += height;
    }
    if (p.scale) {
      for (int64_t o = 0; o < height; ++o) tail[o] = o < c.valid ? p.scale[n0 + o] : 0.0f;
      c.scale = tail;
    }
    return c;
  }

  // xp[((c * mtiles + mt) * bw + k) * MR + r] = x[mt * MR + r][c * bw + k] (0 past M; k < kw(c)): x packed
  // once per call, by tile column, then micro-tile, then k, with the MR rows of a micro-tile interleaved.  A
  // tile then reads its x columns for one micro-tile as one contiguous run of MR * bw floats, and the runs of
  // successive micro-tiles follow each other, so a tile row walking its micro-tiles reads one sequential
  // stream per kept tile column.  Read in place instead, the 6 rows x 13 scattered 128-byte pieces a
  // micro-tile needs at 10 % density (K = 4096, 32 x 32 tiles) were cache and TLB misses no prefetcher
  // follows, and the kernel ran at a fraction of its in-cache rate.
  static void pack_x(const SparseBSRProblem& p, int64_t mt, int64_t mtiles, float* xp) {
    for (int64_t cc = 0; cc < p.T; ++cc) {
      const int64_t x0 = cc * p.bw, kw = std::min(p.bw, p.K - x0);
      float* d = xp + (cc * mtiles + mt) * p.bw * kBsrMR;
      for (int r = 0; r < kBsrMR; ++r) {
        const int64_t m = mt * kBsrMR + r;
        if (m < p.M) {
          const float* src = p.x + m * p.x_sm + x0;
          for (int64_t k = 0; k < kw; ++k) d[k * kBsrMR + r] = src[k];
        } else {
          for (int64_t k = 0; k < kw; ++k) d[k * kBsrMR + r] = 0.0f;
        }
      }
    }
  }

  // Asks for the x panel pieces the row's tiles read in micro-tile `xpanel` (MR * kw floats each, contiguous):
  // issued one micro-tile ahead, their cache misses resolve while the current one computes.  The pieces of
  // a tile row are scattered over the panel (10 % of it at 10 % density), so no hardware prefetcher follows
  // them; without this the FMA loop waited on them (x packed is M x K floats, mostly beyond L2).
  static void prefetch_x(const BsrRow& c, const float* xpanel) {
    const SparseBSRProblem& p = *c.p;
    for (int64_t t = c.t0; t < c.t1; ++t) {
      const int64_t kw = std::min(p.bw, p.K - int64_t(p.col[t]) * p.bw);
      const char* first = reinterpret_cast<const char*>(xpanel + p.col[t] * c.xcol_stride);
      for (int64_t off = 0; off < kw * kBsrMR * 4; off += 64) __builtin_prefetch(first + off, 0, 3);
    }
  }

  static BsrRow pack_row(const SparseBSRProblem& p, int64_t row, float* buf) {
    return p.values_i8 ? pack(p, p.values_i8, row, buf) : pack(p, p.values, row, buf);
  }

  static void run(const SparseBSRProblem& p) {
    static constexpr TileTable<kBsrMR, 2, Tile> table;
    // Scratch per thread, allocated here (bad_alloc -> MemoryError) since no exception may leave the region.
    const int64_t bhp = round_up(p.bh, W);
    const int64_t floats = bhp * p.max_row_tiles * p.bw + 2 * bhp + 2 * NR;
    struct Free {
      void operator()(float* f) const { std::free(f); }
    };
    std::vector<std::unique_ptr<float, Free>> bufs;
    for (int t = 0; t < p.nthreads; ++t)
      bufs.emplace_back(static_cast<float*>(llmaccel::scratch_alloc(floats * 4)));
    const int64_t mtiles = ceil_div(p.M, kBsrMR);
    std::unique_ptr<float, Free> xpack(
        static_cast<float*>(llmaccel::scratch_alloc(mtiles * kBsrMR * p.T * p.bw * 4)));
    float* xp = xpack.get();
    // Items: (block of at most kBsrItemRows x rows, tile row), x-block major, so the threads sweep every tile
    // row over one block of x while it is still in cache (M = 4096, K = 4096 in one block streamed 64 MB of
    // packed x per tile row; blocks of 252 rows measured ~10 % faster there, noisy VM); the blocks are smaller
    // where there are too few tile rows to share.  A tile row is packed again per block, small beside the block's FMAs.  The
    // split changes nothing in any output's summation order.
    const int64_t split = std::max<int64_t>(1, ceil_div(4 * int64_t(p.nthreads), p.R));
    const int64_t mb = std::min(kBsrItemRows, round_up(ceil_div(p.M, split), kBsrMR));
    const int64_t mblocks = ceil_div(p.M, mb), items = p.R * mblocks;
#pragma omp parallel num_threads(p.nthreads)
    {
      float* buf = bufs[omp_get_thread_num()].get();
#pragma omp for schedule(static)
      for (int64_t mt = 0; mt < mtiles; ++mt) pack_x(p, mt, mtiles, xp);  // the barrier after it: x packed for all
      BsrRow c{};
      int64_t packed_row = -1;
#pragma omp for schedule(dynamic, 1)
      for (int64_t it = 0; it < items; ++it) {
        const int64_t row = it % p.R, m_begin = (it / p.R) * mb, m_end = std::min(p.M, m_begin + mb);
        if (row != packed_row) c = pack_row(p, row, buf), c.xcol_stride = mtiles * p.bw * kBsrMR, packed_row = row;
        const int64_t panels = ceil_div(c.valid, NR);
        // Chunks of kBsrChunk micro-tiles: each panel of packed weight (kk x 16 floats, 26 KB for a 4096-wide
        // row at 10 %) stays in L1 while the chunk's x pieces (from L2) stream past it.
        for (int64_t c0 = m_begin; c0 < m_end; c0 += kBsrChunk * kBsrMR) {
          const int64_t c1 = std::min(m_end, c0 + kBsrChunk * kBsrMR);
          for (int64_t pn = 0; pn < panels; ++pn) {
            const int C = round_up(c.valid, W) - pn * NR > W ? 2 : 1;
            for (int64_t m0 = c0; m0 < c1; m0 += kBsrMR) {
              const int R = static_cast<int>(std::min<int64_t>(kBsrMR, c1 - m0));
              const float* xpanel = xp + m0 * p.bw;  // micro-tile m0 / MR of tile column 0 (pack_x)
              if (pn == 0 && m0 + kBsrMR < m_end) prefetch_x(c, xpanel + kBsrMR * p.bw);
              table.fn[R - 1][C - 1](c, xpanel, m0, pn);
            }
          }
        }
      }
    }
  }
};

}  // namespace
}  // namespace LLMACCEL_CPU_CAPABILITY
}  // namespace llmaccel
