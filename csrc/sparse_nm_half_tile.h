// The half-density N:M tile (1:2, 2:4, 4:8 with fp32 activations), written
// once over vector traits and compiled per ISA unit (sparse_nm_avx2.cpp,
// sparse_nm_avx512.cpp):
//     y[m][row] = sum over kept slots s of x[m][col(s)] * value[s]
// where col(s) = (s / n) * m + idx(s) and idx(s) is slot s's B-bit index
// (B = 1, 2, 4 for m = 2, 4, 8; nm_packed.py: slot s at bit B * s of its row).
//
// A 64-column block of x holds 32 kept slots.  They are cut into vectors of
// V::W slots; the slots of vector j always lie in the 2 * V::W columns
// xw = x + 64 * blk + 2 * V::W * j (W / n groups of m = 2n columns), so the
// x value of each slot is a permute across the two V::W-float windows
// xw[0 .. W-1] and xw[W .. 2W-1]:
//     lanes = V::lanes<n, m>(block index bytes, j)   once per weight row, all x rows
//     xs    = V::gather(xw, lanes)                    per x row
//     acc   = fma(xs, values, acc)
// AVX2 (W = 8): 2 vpermps + 1 vblendps per gather; AVX-512 (W = 16): 1
// vpermt2ps.  The kernel streams only the compressed bytes (values and index
// bits) and expands in registers; x (a few rows of K floats) stays in L1/L2.
//
// Accumulators: V::accs(R) chains per x row (enough independent FMA chains
// without spilling), slot vector number f = blk * (32 / W) + j goes to chain
// f mod accs(R).  The columns past the last full 64-column block (and a padded
// tail group) run the portable scalar loop.  Fixed summation order: the chains
// in order, the horizontal sum, the scalar tail, then scale and bias
// (sparse_store).
//
// Traits V: T (V::W floats), I (V::W lane numbers), zero(), add, fma(a, b, c) =
// a * b + c, hsum, load_values(const float* | const int8_t*) (int8 sign-extended
// and converted), lanes<n, m>(block_idx, j), gather(xw, lanes), accs(R), kLockstepRows (weight rows per tile at
// M = 1: sn_run_lockstep; 1 = row after row).
#pragma once

#include <immintrin.h>

#include <type_traits>
#include <utility>

#include "sparse_nm_kernel.h"

namespace llmaccel {
inline namespace LLMACCEL_CPU_CAPABILITY {  // see common.h
namespace {

// How far ahead of the current block the software prefetch asks for the values and the index bits, in bytes
// (the same distance for int8 values: at 512 values, 512 bytes, the int8 stream ran 0.6-0.7 of a plain read).
constexpr int64_t kSnHalfPrefetchBytes = 4096;

// f(std::integral_constant<int, 0>{}), .., f(std::integral_constant<int, G - 1>{}): a loop over g with g a
// compile-time constant in the body.
template <int G, class F, int... I>
inline void sn_for_each_impl(F&& f, std::integer_sequence<int, I...>) {
  (f(std::integral_constant<int, I>{}), ...);
}
template <int G, class F>
inline void sn_for_each(F&& f) {
  sn_for_each_impl<G>(f, std::make_integer_sequence<int, G>{});
}

// Index bits per kept slot of the half-density pattern with group size m (2, 4, 8): 1, 2, 4.
constexpr int sn_half_index_bits(int m) { return m == 2 ? 1 : m == 4 ? 2 : 4; }

template <class V, int NN, int MM>
struct SnHalfTile {
  static_assert(2 * NN == MM && (MM == 2 || MM == 4 || MM == 8), "1:2, 2:4 or 4:8");
  static constexpr int B = sn_half_index_bits(MM);
  static constexpr int W = V::W;
  static constexpr int kVecs = 32 / W;  // slot vectors per 64-column block

  // R x rows times C weight rows row, row + step, .., row + (C - 1) step (C > 1 only at M = 1:
  // sn_run_lockstep, whose why is there), each (x row, weight row) with the same chains, order, scalar tail
  // and store whatever C is, so a result does not depend on which weight rows share a tile.  The prefetch
  // asks for the bytes kSnHalfPrefetchBytes ahead in each row's stream (the rows that follow are the next
  // ones of the same segment), or for adjacent rows (step 1) the same bytes of the next group's rows if
  // that is farther.
  template <int R, int C>
  struct Tile {
    static constexpr int A = V::accs(R);  // accumulator chains per (x row, weight row)

    template <class T>
    static void run_t(const SparseNMProblem& p, int64_t row, int64_t m0, int64_t step) {
      const T* v[C];
      const uint8_t* ix[C];
      for (int c = 0; c < C; ++c) v[c] = sn_values<T>(p, row + c * step), ix[c] = p.idx + (row + c * step) * p.idx_sn;
      const float* xr[R];
      for (int r = 0; r < R; ++r) xr[r] = p.x + (m0 + r) * p.x_sm;
      const int64_t nblocks = p.K / 64;  // whole groups, every column < K
      const int64_t rows_ahead = C > 1 && step == 1 ? C : 0;
      const int64_t v_ahead = std::max<int64_t>(kSnHalfPrefetchBytes, rows_ahead * p.values_sn * int64_t(sizeof(T)));
      const int64_t i_ahead = std::max<int64_t>(kSnHalfPrefetchBytes / 2, rows_ahead * p.idx_sn);
      typename V::T acc[C][R][A];
      for (int c = 0; c < C; ++c)
        for (int r = 0; r < R; ++r)
          for (int a = 0; a < A; ++a) acc[c][r][a] = V::zero();
      // Block blk, its slot vectors into chains (g * kVecs + j) % A, g = blk % G: a compile-time chain in the
      // unrolled loops below, so the accumulators stay in registers (a chain index computed at run time, as
      // with the AVX-512 unit's 2 vectors a block and 4 chains, puts them in memory: ~1.3x slower).
      constexpr int G = A > kVecs ? A / kVecs : 1;  // blocks per turn of the chains
      static_assert(A % kVecs == 0 || kVecs % A == 0, "chains and vectors per block must nest");
      const auto block = [&](int64_t blk, auto g) {
        for (int c = 0; c < C; ++c) {
          const T* vb = v[c] + blk * 32;
          // The block's values: 2 cache lines (fp32) or half of one (int8).
          _mm_prefetch(reinterpret_cast<const char*>(vb) + v_ahead, _MM_HINT_T0);
          if constexpr (sizeof(T) == 4) _mm_prefetch(reinterpret_cast<const char*>(vb + 16) + v_ahead, _MM_HINT_T0);
          const uint8_t* bidx = ix[c] + blk * 4 * B;  // 32 slots x B bits
          _mm_prefetch(reinterpret_cast<const char*>(bidx) + i_ahead, _MM_HINT_T0);
#pragma GCC unroll 4
          for (int j = 0; j < kVecs; ++j) {
            const typename V::I lanes = V::template lanes<NN, MM>(bidx, j);
            const typename V::T vals = V::load_values(vb + W * j);
            const int a = (decltype(g)::value * kVecs + j) % A;
            for (int r = 0; r < R; ++r) {
              const float* xw = xr[r] + blk * 64 + 2 * W * j;
              acc[c][r][a] = V::fma(V::gather(xw, lanes), vals, acc[c][r][a]);
            }
          }
        }
      };
      int64_t blk = 0;
      for (; blk + G <= nblocks; blk += G)
        sn_for_each<G>([&](auto g) { block(blk + decltype(g)::value, g); });
      sn_for_each<G>([&](auto g) {  // the last nblocks % G blocks
        if (blk + decltype(g)::value < nblocks) block(blk + decltype(g)::value, g);
      });
      for (int c = 0; c < C; ++c) {
        float tail[R][4] = {};
        sn_scalar_groups<T, R>(p, row + c * step, m0, nblocks * (64 / p.m), tail);
        for (int r = 0; r < R; ++r) {
          typename V::T s = acc[c][r][0];
          for (int a = 1; a < A; ++a) s = V::add(s, acc[c][r][a]);
          sparse_store(p, row + c * step, m0 + r, V::hsum(s) + sparse_sum4<R>(tail, r));
        }
      }
    }
    static void run_step(const SparseNMProblem& p, int64_t row, int64_t m0, int64_t step) {
      if (p.values_i8)
        run_t<int8_t>(p, row, m0, step);
      else
        run_t<float>(p, row, m0, step);
    }
    static void run(const SparseNMProblem& p, int64_t row, int64_t m0) { run_step(p, row, m0, 1); }
  };
};

// Decode walks kLockstepRows weight rows per tile (sn_run_lockstep); other M run sn_run's nest.
template <class V, int NN, int MM>
void sn_run_half_pattern(const SparseNMProblem& p) {
  sn_run_lockstep<SnHalfTile<V, NN, MM>::template Tile, V::kLockstepRows>(p);
}

// The kernel for the half-density patterns (the caller checks (n, m) is one of them).
template <class V>
void sn_run_half(const SparseNMProblem& p) {
  if (p.n == 2 && p.m == 4)
    sn_run_half_pattern<V, 2, 4>(p);
  else if (p.n == 4 && p.m == 8)
    sn_run_half_pattern<V, 4, 8>(p);
  else
    sn_run_half_pattern<V, 1, 2>(p);
}

inline bool sn_is_half_pattern(int64_t n, int64_t m) { return 2 * n == m && (m == 2 || m == 4 || m == 8); }

}  // namespace
}  // namespace LLMACCEL_CPU_CAPABILITY
}  // namespace llmaccel
