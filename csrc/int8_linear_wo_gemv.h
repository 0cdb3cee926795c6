// The weight-only decode GEMV (M <= 2), written once over vector traits and
// compiled per ISA unit (int8_linear_wo_avx2.cpp, int8_linear_wo_avx512vnni.cpp):
//     y[m][n] = w_scale[n] * sum_k x[m][k] * float(W[n][k]) + bias[n]
// Each thread owns one contiguous range of output channels, i.e. one
// contiguous run of W's rows (when ldw == K), cuts it into V::kGroupRows
// segments and reads one row of each in lockstep (wo_gemv_group: why below),
// plus a software prefetch ahead.  Per V::W weight bytes: one sign-extend
// to int32, one convert, one FMA per row of x; x (K floats) stays in L1.
// The AVX2 unit walks one row at a time (kGroupRows = 1): on the AVX2 EPYC
// (Zen 3) the register-tile kernel's 4 interleaved rows streamed 8.4 GB/s
// where a plain read ran ~28, and the lockstep walk has not been measured
// on an AVX2 machine.
//
// Traits V: T (a vector of V::W floats), zero(), load_i8(p) (V::W int8 ->
// float), loadu(p), fma(a, b, c) = a * b + c, add, hsum; kPrefetchBytes, how far ahead in the
// weight row the software prefetch reaches; kGroupRows, how many weight rows (a segment apart) run in
// lockstep (wo_gemv_rows, wo_gemv_group).
#pragma once

#include <omp.h>

#include <algorithm>

#include "common.h"
#include "int8_linear_wo.h"

namespace llmaccel {
inline namespace LLMACCEL_CPU_CAPABILITY {  // see common.h
namespace {

// G weight rows n, n + step, ..., n + (G - 1) step in lockstep (wo_gemv_rows passes rows that exist),
// J independent accumulator chains per (row of x, weight row): per step of L * J weight bytes, every
// row loads its J vectors, and each x vector, loaded once, meets the G rows.  Why lockstep: on the Sapphire
// Rapids class Xeon one thread reading one sequential stream draws 14-16 GB/s from DRAM (2 threads), while
// 4 rows read side by side in 256-byte steps draw 20-26 and 8 rows 22-30 (bench/read_streams_probe.cpp,
// 2 threads, 512 MB: more pages walked at once keep more lines in flight); taking whole rows from several
// parts of the range in turn does not get there (8 KiB per turn: 16-19 GB/s).  Why rows a segment apart
// (wo_gemv_rows) rather than adjacent: adjacent rows share pages when rows are short; one thread, same
// process, 8-32 layers beyond the L3, M = 1: 5632 x 2048 1.21x, 2048 x 2048 1.11x, 2048 x 5632 1.07x,
// 4096 x 4096 1.03x the adjacent walk.
// One FMA chain has a 4-cycle latency: J * G * R chains must cover it, so J = 8 / G for M = 1 (8 chains)
// and 4 / G for M = 2, at least 1.  Every row's arithmetic (its J chains, their order, the reduction)
// depends only on J, never on which rows share its group, so results do not depend on the grouping (hence
// on the thread count).
template <class V, int R, int G>
constexpr int wo_chains() {
  return (R == 1 ? 8 : 4) / G > 0 ? (R == 1 ? 8 : 4) / G : 1;
}

template <class V, int R, int G, int J>
inline void wo_gemv_group(const Int8LinearWOProblem& p, int64_t n, int64_t step = 1) {
  constexpr int64_t L = V::W, kStep = L * J;
  const int64_t K = p.K, kfull = K / kStep * kStep, kvec = K / L * L;
  const int8_t* w[G];
  for (int g = 0; g < G; ++g) w[g] = p.w + (n + g * step) * p.ldw;
  // (G = 1, the single-row walk, or rows a segment apart: kPrefetchBytes ahead in each row's stream, as the
  // unit tuned it; adjacent rows: the same bytes of the next group's rows.)
  const int64_t ahead = G > 1 && step == 1 ? std::max<int64_t>(V::kPrefetchBytes, G * p.ldw) : V::kPrefetchBytes;
  typename V::T acc[G][R][J];
  for (int g = 0; g < G; ++g)
    for (int r = 0; r < R; ++r)
      for (int j = 0; j < J; ++j) acc[g][r][j] = V::zero();
  for (int64_t k = 0; k < kfull; k += kStep) {
    typename V::T xv[R][J];
    for (int r = 0; r < R; ++r)
      for (int j = 0; j < J; ++j) xv[r][j] = V::load(p.x + r * p.x_sm + k + L * j);
    for (int g = 0; g < G; ++g) {
      // The same bytes of the next group's row (G rows ahead, at least kPrefetchBytes: where the walk
      // reads next in this part of memory), one line per 64 bytes of the step.  Measured on the 2-core
      // SPR VM, 8 layers, G = 4: 8192 x 4096 rows 18.5 GB/s against 17.8 with a fixed 4 KiB (and 14.9
      // for the single-row walk); 2048 x 5632 15.5 against 12.7.
      if (p.prefetch)
        for (int64_t b = 0; b < kStep; b += 64)
          _mm_prefetch(reinterpret_cast<const char*>(w[g] + k + b + ahead), _MM_HINT_T0);
      for (int j = 0; j < J; ++j) {
        const typename V::T wf = V::load_i8(w[g] + k + L * j);
        for (int r = 0; r < R; ++r) acc[g][r][j] = V::fma(xv[r][j], wf, acc[g][r][j]);
      }
    }
  }
  for (int g = 0; g < G; ++g) {
    for (int64_t k = kfull; k < kvec; k += L) {  // vector tail
      const typename V::T wf = V::load_i8(w[g] + k);
      for (int r = 0; r < R; ++r) acc[g][r][0] = V::fma(V::load(p.x + r * p.x_sm + k), wf, acc[g][r][0]);
    }
    const int64_t ng = n + g * step;
    const float scale = p.w_scale[ng], bias = p.bias ? p.bias[ng] : 0.0f;
    for (int r = 0; r < R; ++r) {
      // Pairwise: (0 + 1) + (2 + 3) + ..., a fixed order for a given J.
      for (int j = 2 * (J / 2) - 1; j >= 1; j -= 2) acc[g][r][j - 1] = V::add(acc[g][r][j - 1], acc[g][r][j]);
      typename V::T t = acc[g][r][0];
      for (int j = 2; j < J; j += 2) t = V::add(t, acc[g][r][j]);
      float s = V::hsum(t);
      const float* x = p.x + r * p.x_sm;
      for (int64_t k = kvec; k < K; ++k) s += x[k] * static_cast<float>(w[g][k]);
      p.y[r * p.y_sm + ng] = s * scale + bias;
    }
  }
}

// Rows n_begin .. n_end - 1: the range cut into G = V::kGroupRows equal segments, whose rows are walked in
// lockstep, one from each segment (wo_gemv_group with step = the segment length: why there), then the last
// (n_end - n_begin) % G rows one by one; G = 1: row after row.  Each row's arithmetic is unchanged by the
// grouping, so results are the same bit for bit whatever the thread count.
template <class V, int R>
void wo_gemv_rows(const Int8LinearWOProblem& p, int64_t n_begin, int64_t n_end) {
  constexpr int G = V::kGroupRows, J = wo_chains<V, R, G>();
  const int64_t seg = G > 1 ? (n_end - n_begin) / G : 0;
  if constexpr (G > 1)
    for (int64_t n = n_begin; n < n_begin + seg; ++n) wo_gemv_group<V, R, G, J>(p, n, seg);
  for (int64_t n = n_begin + G * seg; n < n_end; ++n) wo_gemv_group<V, R, 1, J>(p, n);
}

template <class V>
void wo_gemv(const Int8LinearWOProblem& p) {
  const int64_t N = p.N;
#pragma omp parallel num_threads(p.nthreads)
  {
    // One contiguous range of channels per thread (ends rounded to 8 rows
    // so no two threads share a cache line of y).
    const int t = omp_get_thread_num(), T = omp_get_num_threads();
    const int64_t per = round_up(ceil_div(N, T), 8);
    const int64_t n0 = std::min<int64_t>(N, t * per), n1 = std::min<int64_t>(N, n0 + per);
    if (p.M == 1)
      wo_gemv_rows<V, 1>(p, n0, n1);
    else
      wo_gemv_rows<V, 2>(p, n0, n1);
  }
}

}  // namespace
}  // namespace LLMACCEL_CPU_CAPABILITY
}  // namespace llmaccel
