// The large-M N:M kernel (sparse_nm_large_linear): "N:M as n/m of the FMAs on a transposed activation
// panel".  One body, compiled per ISA unit (sparse_nm_large_generic.cpp, _avx2.cpp, _avx512.cpp) over a
// small vector-traits type V (W = 8 or 16 floats: load, store, set1, fma) that the unit supplies; everything is in
// the unit's capability namespace (common.h) and an anonymous namespace.
//
// Math: y[i][o] = sum over the kept slots s of weight row o of  x[i][col(o, s)] * value(o, s),
//       then * scale[o] (int8 values) and + bias[o].
//
// Layout of the work:
//   * xt: x packed once per call into panels of kNlMR rows, k-major: xt[panel][k][r] = x[panel*MR + r][k]
//     (rows past M and columns k >= K are zero, through groups * m, plus one: padding slots point at
//     column K with value 0, so they add 0 * 0 and never read x past K).
//   * Per work item (a block of kNlNB output channels x a block of panels) and per K block of ~kNlKC
//     columns (whole groups), the item's weight rows are decoded once into a value and an offset per kept
//     slot: the fp32 value (int8 converted here; the scale is applied per output at the end) and the slot's
//     row offset in the panel, so the inner loop does no bit unpacking.  Each channel's values and offsets
//     are contiguous runs (NlSlots: wv / wo[channel][slot]), which the decode writes with vector stores and
//     the micro-kernel reads as kNlNR parallel streams.
//   * Micro-kernel: kNlNR channels x kNlMR rows in NR x MV accumulators (MV = MR / W vectors).  Per kept
//     weight: 1 scalar load (offset), 1 broadcast of its value, MV loads of xt[k][...], MV FMAs: n/m of
//     dense's FMAs, at MV + 2 loads per MV FMAs (the blocking choice, sparse_nm_large_avx2.cpp).
//     The xt panel's K block (kNlKC x MR floats) stays in L1 while the item's tiles stream their
//     entries from L2.
//   * Accumulators live in a per-item C buffer between K blocks (loaded at the start of each block, so each
//     output is ONE chain of FMAs in slot order over the whole K): the summation order of an output depends
//     on nothing but its weight row, never on the blocking or the thread count, so results are bit-identical
//     for any nthreads.
#pragma once

#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <memory>

#include "common.h"
#include "memory.h"
#include "sparse_nm.h"

namespace llmaccel {
inline namespace LLMACCEL_CPU_CAPABILITY {  // see common.h
namespace {

// The blocking (why: sparse_nm_large_avx2.cpp).  The panel's K block, kNlKC x kNlMR floats = 24 KiB, is
// what must stay in L1 (32 KiB on Zen 3); an item's entries for one K block (kNlNB x kNlKC/2 x 8 B =
// 32 KiB for 2:4) in L2.
constexpr int kNlNR = 2;            // output channels per micro-tile
constexpr int kNlMR = 48;           // x rows per panel: 6 vectors of 8 floats (AVX2), 3 of 16 (AVX-512)
constexpr int64_t kNlKC = 128;      // columns per K block (rounded down to whole groups, at least one)
constexpr int64_t kNlNB = 64;       // output channels per work item (a multiple of kNlNR)
constexpr int64_t kNlMaxPanels = 16;  // panels per work item: the weight is decoded once per 768 x rows

// One K block's decoded slots for an item's channels: channel c's slot s at [c * S + s] (S slots per channel).
struct NlSlots {
  float* v;      // the kept weight (int8: unscaled)
  int32_t* off;  // its column's row offset in the xt panel, relative to the K block's first column
};

struct NlFree {
  void operator()(void* q) const { std::free(q); }
};
template <class T>
using NlBuf = std::unique_ptr<T, NlFree>;
template <class T>
NlBuf<T> nl_alloc(int64_t n) {
  return NlBuf<T>(static_cast<T*>(llmaccel::scratch_alloc(std::max<int64_t>(n, 16) * int64_t(sizeof(T)))));
}

// The call's blocking, fixed before the parallel region.
struct NlPlan {
  int64_t panels;     // ceil(M / MR)
  int64_t rows;       // rows of one xt panel: groups * m + 1 (>= K + 1; rows >= K are zero)
  int64_t kc_groups;  // groups per K block
  int64_t kblocks;
  int64_t mb_panels;  // panels per work item
  int64_t mblocks, nblocks, items;
};

inline NlPlan nl_plan(const SparseNMProblem& p) {
  NlPlan q{};
  q.panels = ceil_div(p.M, kNlMR);
  q.rows = p.groups * p.m + 1;
  q.kc_groups = std::max<int64_t>(1, kNlKC / p.m);
  q.kblocks = ceil_div(p.groups, q.kc_groups);
  q.mblocks = ceil_div(q.panels, kNlMaxPanels);
  q.mb_panels = ceil_div(q.panels, q.mblocks);  // balanced M blocks
  q.nblocks = ceil_div(p.N, kNlNB);
  q.items = q.nblocks * q.mblocks;
  return q;
}

// Panel `pi` of xt: xt[k * MR + r] = x[pi * MR + r][k] for k < K and rows < M, zero elsewhere.  The
// transposition runs in chunks of kNlPackCols columns, so the chunk's panel rows (kNlPackCols * MR floats)
// stay in L1 while each x row contributes a contiguous run.
constexpr int64_t kNlPackCols = 32;
inline void nl_pack_panel(const SparseNMProblem& p, const NlPlan& q, int64_t pi, float* xt) {
  const int64_t r_end = std::min<int64_t>(kNlMR, p.M - pi * kNlMR);
  const float* x0 = p.x + pi * kNlMR * p.x_sm;
  for (int64_t k0 = 0; k0 < p.K; k0 += kNlPackCols) {
    const int64_t k1 = std::min(p.K, k0 + kNlPackCols);
    for (int64_t r = 0; r < r_end; ++r)
      for (int64_t k = k0; k < k1; ++k) xt[k * kNlMR + r] = x0[r * p.x_sm + k];
    for (int64_t k = k0; k < k1; ++k) std::fill(xt + k * kNlMR + r_end, xt + (k + 1) * kNlMR, 0.0f);
  }
  std::fill(xt + p.K * kNlMR, xt + q.rows * kNlMR, 0.0f);
}

// The weight streams from DRAM in runs of one K block per row (a few hundred bytes), too short for the
// hardware prefetcher: decoding a row's block asks for the same row's next block (`bytes` of values, and
// its index bytes), which the next decode of this item reads.
inline void nl_prefetch_next_block(const void* v, int64_t v_bytes, const uint8_t* ix, int64_t ix_bytes) {
  const char* vb = static_cast<const char*>(v);
  for (int64_t o = 0; o < v_bytes; o += 64) __builtin_prefetch(vb + o, 0, 2);
  for (int64_t o = 0; o < ix_bytes; o += 64) __builtin_prefetch(ix + o, 0, 2);
}

// Where one index byte holds whole groups (n * bits divides 8: 2:4, 1:2, 1:4, 1:16 ...), a table gives the
// panel offsets of a byte's slots relative to its first group: half the work per slot of the bit loop.
struct NlByteTable {
  int gpb = 0;  // groups per byte (0: no table for this pattern)
  int spb = 0;  // slots per byte
  int32_t off[256][8];
};

inline void nl_byte_table(const SparseNMProblem& p, NlByteTable* t) {
  const int gbits = p.n * p.bits;
  if (8 % gbits != 0) return;
  t->gpb = 8 / gbits, t->spb = 8 / p.bits;
  for (int byte = 0; byte < 256; ++byte)
    for (int j = 0; j < t->spb; ++j) {
      const int f = (byte >> (j * p.bits)) & ((1 << p.bits) - 1);
      t->off[byte][j] = static_cast<int32_t>(((j / p.n) * p.m + f) * kNlMR);
    }
}

// Decodes slots [g0 * n, g1 * n) of weight rows [o0, o0 + nb) (rows >= nb up to the tile: zero values) into
// w.v / w.off[c * S + s].  A slot whose column lies past K (padding, or a corrupt index) gets value 0 and the
// zero row K; a corrupt index below K reads that column (an unspecified result, never out of bounds).
// The index fields are read with a running byte pointer and shift (bits is 1, 2, 4 or 8, so no field
// straddles a byte), and groups whose every possible field lies below K skip the bounds test.  Each
// channel's runs are contiguous, so the value conversion and the table's offsets (a whole byte's slots at
// once) compile to vector loads and stores.
template <class T>
inline void nl_decode(const SparseNMProblem& p, const NlByteTable& tab, const T* values, int64_t o0, int64_t nb,
                      int64_t g0, int64_t g1, NlSlots w) {
  const int n = p.n, b = p.bits;
  const unsigned mask = (1u << b) - 1u;
  const int64_t S = (g1 - g0) * n, m = p.m, K = p.K;
  const int64_t maxidx = mask;
  const int64_t g_safe = std::max(g0, std::min(g1, p.K > maxidx ? (p.K - 1 - maxidx) / m + 1 : 0));
  for (int64_t c = 0; c < round_up(nb, kNlNR); ++c) {
    float* __restrict wv = w.v + c * S;
    int32_t* __restrict wo = w.off + c * S;
    if (c >= nb) {
      std::fill(wv, wv + S, 0.0f);
      std::fill(wo, wo + S, 0);
      continue;
    }
    const T* __restrict v = values + (o0 + c) * p.values_sn + g0 * n;
    const int64_t bit0 = g0 * n * b;
    const uint8_t* ix = p.idx + (o0 + c) * p.idx_sn + (bit0 >> 3);
    const int64_t next = std::min(S, (p.groups - g1) * n);  // slots of the row's next block
    nl_prefetch_next_block(v + S, next * int64_t(sizeof(T)), ix + ((S * b) >> 3), (next * b + 7) / 8);
    // Values first (one converting copy), then the offsets; the padding tail below zeroes its values.
    for (int64_t s = 0; s < S; ++s) wv[s] = static_cast<float>(v[s]);
    unsigned sh = static_cast<unsigned>(bit0 & 7);
    int32_t base = 0;  // (g - g0) * m * MR
    const int32_t step = static_cast<int32_t>(m * kNlMR);
    int64_t s = 0, g = g0;
    if (tab.gpb > 0 && sh == 0) {
      // Whole bytes of whole groups (2:4, 1:2, 1:4, ...): one table row per index byte.
      const int32_t bstep = step * tab.gpb;
      const int spb = tab.spb;
      for (; g + tab.gpb <= g_safe; g += tab.gpb, base += bstep, ++ix, s += spb) {
        const int32_t* __restrict t = tab.off[*ix];
        for (int j = 0; j < spb; ++j) wo[s + j] = base + t[j];
      }
    }
    for (; g < g1; ++g, base += step)
      for (int j = 0; j < n; ++j, ++s) {
        const unsigned f = (static_cast<unsigned>(*ix) >> sh) & mask;
        sh += b;
        ix += sh >> 3;
        sh &= 7;
        if (g >= g_safe && g * m + f >= K) {  // padding (or a corrupt index past K): the zero row
          wv[s] = 0.0f;
          wo[s] = static_cast<int32_t>((K - g0 * m) * kNlMR);
        } else {
          wo[s] = base + static_cast<int32_t>(f) * kNlMR;
        }
      }
  }
}

// c[r][i] (+)= sum over slots s of w[s][r].v * xt[w[s][r].off + i], r < NR, i < V::W * MV: one micro-tile, one
// K block.  MV = kNlMR / V::W for full panels; the last panel of x runs only the vectors its rows reach.
template <class V, int MV>
inline void nl_micro(const float* xt, const float* wv, const int32_t* wo, int64_t S, float* c, bool first) {
  constexpr int W = V::W;
  typename V::reg acc[kNlNR][MV];
  for (int r = 0; r < kNlNR; ++r)
    for (int j = 0; j < MV; ++j) acc[r][j] = first ? V::zero() : V::load(c + r * kNlMR + W * j);
  for (int64_t s = 0; s < S; ++s)
    for (int r = 0; r < kNlNR; ++r) {
      const typename V::reg v = V::set1(wv[r * S + s]);
      const float* px = xt + wo[r * S + s];
      for (int j = 0; j < MV; ++j) acc[r][j] = V::fma(v, V::load(px + W * j), acc[r][j]);
    }
  for (int r = 0; r < kNlNR; ++r)
    for (int j = 0; j < MV; ++j) V::store(c + r * kNlMR + W * j, acc[r][j]);
}

template <class V>
inline void nl_micro_vectors(int mv, const float* xt, const float* wv, const int32_t* wo, int64_t S, float* c,
                             bool first) {
  static_assert(kNlMR % V::W == 0 && kNlMR / V::W <= 6, "one case per vector count");
  switch (mv) {
    case 1: return nl_micro<V, 1>(xt, wv, wo, S, c, first);
    case 2: return nl_micro<V, std::min(2, kNlMR / V::W)>(xt, wv, wo, S, c, first);
    case 3: return nl_micro<V, std::min(3, kNlMR / V::W)>(xt, wv, wo, S, c, first);
    case 4: return nl_micro<V, std::min(4, kNlMR / V::W)>(xt, wv, wo, S, c, first);
    case 5: return nl_micro<V, std::min(5, kNlMR / V::W)>(xt, wv, wo, S, c, first);
    default: return nl_micro<V, kNlMR / V::W>(xt, wv, wo, S, c, first);
  }
}

// One work item: output channels [o0, o0 + nb) x panels [p0, p1).  w: the K block's decoded slots for the
// item's channels; cbuf: c[tile][panel][NR][MR].
template <class V, class T>
void nl_item(const SparseNMProblem& p, const NlPlan& q, const NlByteTable& tab, const float* xt, const T* values,
             int64_t o0, int64_t nb, int64_t p0, int64_t p1, NlSlots w, float* cbuf) {
  const int64_t tiles = ceil_div(nb, kNlNR), np = p1 - p0;
  if (q.kblocks == 0) std::fill(cbuf, cbuf + tiles * np * kNlNR * kNlMR, 0.0f);  // K = 0: y = bias
  for (int64_t kb = 0; kb < q.kblocks; ++kb) {
    const int64_t g0 = kb * q.kc_groups, g1 = std::min(p.groups, g0 + q.kc_groups);
    const int64_t S = (g1 - g0) * p.n;
    nl_decode<T>(p, tab, values, o0, nb, g0, g1, w);
    // The panel's K block (kc x MR floats) is read at random rows, which the hardware prefetcher cannot
    // follow: each tile also prefetches its share of the next panel's block, so it is in L1 (or on its
    // way) when that panel starts.
    const int64_t lines = ceil_div((g1 - g0) * p.m * kNlMR, 16), per_tile = ceil_div(lines, tiles);
    for (int64_t pi = p0; pi < p1; ++pi) {
      const int mv = static_cast<int>(ceil_div(std::min<int64_t>(kNlMR, p.M - pi * kNlMR), V::W));
      const float* xk = xt + pi * q.rows * kNlMR + g0 * p.m * kNlMR;
      const float* next = xk + q.rows * kNlMR;
      for (int64_t t = 0; t < tiles; ++t) {
        if (pi + 1 < p1)
          for (int64_t l = t * per_tile; l < std::min(lines, (t + 1) * per_tile); ++l)
            __builtin_prefetch(next + 16 * l, 0, 3);
        nl_micro_vectors<V>(mv, xk, w.v + t * S * kNlNR, w.off + t * S * kNlNR, S,
                            cbuf + (t * np + (pi - p0)) * kNlNR * kNlMR, kb == 0);
      }
    }
  }
  // y = acc (* scale) + bias, transposed out of the tiles row by row: each y row's nb outputs are one
  // contiguous run, and the row's reads of cbuf (one float per channel) fall in lines its neighbour rows
  // reuse.  (Tile by tile, the writes of one channel are y's row stride apart, which maps them onto a few
  // L1 sets: that order took ~25 % of a 4096 x 4096 call at M = 512.)
  for (int64_t pi = p0; pi < p1; ++pi) {
    const int64_t r_end = std::min<int64_t>(kNlMR, p.M - pi * kNlMR);
    const float* cp = cbuf + (pi - p0) * kNlNR * kNlMR;
    for (int64_t r = 0; r < r_end; ++r) {
      float* yr = p.y + (pi * kNlMR + r) * p.y_sm + o0;
      for (int64_t c = 0; c < nb; ++c) {
        const float acc = cp[(c / kNlNR) * np * kNlNR * kNlMR + (c % kNlNR) * kNlMR + r];
        const int64_t o = o0 + c;
        yr[c] = (p.values_i8 ? acc * p.scale[o] : acc) + (p.bias ? p.bias[o] : 0.0f);
      }
    }
  }
}

// The whole call: pack xt, then the items over the threads.  All scratch is allocated here, before the
// parallel region (a bad_alloc may not leave one).
template <class V>
void nl_run(const SparseNMProblem& p) {
  const NlPlan q = nl_plan(p);
  const int T = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(p.nthreads, q.items)));
  const int64_t wsize = round_up(kNlNB, kNlNR) * q.kc_groups * p.n;  // slots per K block of an item
  const int64_t csize = round_up(kNlNB, kNlNR) * q.mb_panels * kNlMR;
  NlBuf<float> xt = nl_alloc<float>(q.panels * q.rows * kNlMR);
  NlBuf<NlByteTable> tab = nl_alloc<NlByteTable>(1);
  tab->gpb = 0;
  nl_byte_table(p, tab.get());
  NlBuf<float> wvbuf = nl_alloc<float>(T * wsize);
  NlBuf<int32_t> wobuf = nl_alloc<int32_t>(T * wsize);
  NlBuf<float> cbuf = nl_alloc<float>(T * csize);
#pragma omp parallel num_threads(T)
  {
    const int t = omp_get_thread_num();
#pragma omp for schedule(static)
    for (int64_t pi = 0; pi < q.panels; ++pi) nl_pack_panel(p, q, pi, xt.get() + pi * q.rows * kNlMR);
#pragma omp for schedule(dynamic, 1)
    for (int64_t it = 0; it < q.items; ++it) {
      const int64_t nbk = it % q.nblocks, mbk = it / q.nblocks;
      const int64_t o0 = nbk * kNlNB, nb = std::min<int64_t>(kNlNB, p.N - o0);
      const int64_t p0 = mbk * q.mb_panels, p1 = std::min(q.panels, p0 + q.mb_panels);
      const NlSlots w{wvbuf.get() + t * wsize, wobuf.get() + t * wsize};
      float* c = cbuf.get() + t * csize;
      if (p.values_i8)
        nl_item<V, int8_t>(p, q, *tab, xt.get(), p.values_i8, o0, nb, p0, p1, w, c);
      else
        nl_item<V, float>(p, q, *tab, xt.get(), p.values, o0, nb, p0, p1, w, c);
    }
  }
}

}  // namespace
}  // namespace LLMACCEL_CPU_CAPABILITY
}  // namespace llmaccel
