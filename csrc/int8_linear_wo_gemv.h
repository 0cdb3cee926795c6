// The weight-only decode GEMV (M <= 2), written once over vector traits and
// compiled per ISA unit (int8_linear_wo_avx2.cpp, int8_linear_wo_avx512vnni.cpp):
//     y[m][n] = w_scale[n] * sum_k x[m][k] * float(W[n][k]) + bias[n]
// Each thread owns one contiguous range of output channels, i.e. one
// contiguous run of W's rows (when ldw == K), and walks it row after row: a
// single forward stream the hardware prefetcher follows, plus a software
// prefetch a few lines ahead.  Per V::W weight bytes: one sign-extend to
// int32, one convert, one FMA per row of x; x (K floats) stays in L1.  The
// register-tile kernel (int8_linear_wo_kernel.h) instead interleaves 4 rows
// of W (4 short streams, one page each at K = 4096), which the prefetcher
// barely ramps up on: 8.4 GB/s where a plain read ran ~28 (AVX2 EPYC), and
// 0.53 of a plain read on a Sapphire Rapids class Xeon before the AVX-512
// unit took this path.
//
// Traits V: T (a vector of V::W floats), zero(), load_i8(p) (V::W int8 ->
// float), loadu(p), fma(a, b, c) = a * b + c, add, hsum; kPrefetchBytes, how far ahead in the
// weight row the software prefetch reaches; kStreams, how many interleaved row streams each thread
// walks (wo_gemv_rows).
#pragma once

#include <omp.h>

#include <algorithm>

#include "common.h"
#include "int8_linear_wo.h"

namespace llmaccel {
inline namespace LLMACCEL_CPU_CAPABILITY {  // see common.h
namespace {

// J independent accumulator chains per row of x: one FMA chain has a 4-cycle latency, so 4 chains for one
// row (M = 1) were latency-bound (12-13 GB/s of cache-resident weight per core on Zen 3, against 20 for the
// W8A8 kernel); M = 1 takes 8 chains, M = 2 has 2 x 4 already.
template <class V, int R>
inline void wo_gemv_row(const Int8LinearWOProblem& p, int64_t n) {
  constexpr int J = R == 1 ? 8 : 4;
  constexpr int64_t L = V::W, kStep = L * J;
  const int64_t K = p.K, kfull = K / kStep * kStep, kvec = K / L * L;
  const int8_t* w = p.w + n * p.ldw;
  typename V::T acc[R][J];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < J; ++j) acc[r][j] = V::zero();
  for (int64_t k = 0; k < kfull; k += kStep) {
#pragma GCC unroll 4
    for (int64_t b = 0; b < kStep; b += 64)
      _mm_prefetch(reinterpret_cast<const char*>(w + k + b + V::kPrefetchBytes), _MM_HINT_T0);
    typename V::T wf[J];
    for (int j = 0; j < J; ++j) wf[j] = V::load_i8(w + k + L * j);
    for (int r = 0; r < R; ++r) {
      const float* x = p.x + r * p.x_sm + k;
      for (int j = 0; j < J; ++j) acc[r][j] = V::fma(V::load(x + L * j), wf[j], acc[r][j]);
    }
  }
  for (int64_t k = kfull; k < kvec; k += L) {  // vector tail
    const typename V::T wf = V::load_i8(w + k);
    for (int r = 0; r < R; ++r) acc[r][0] = V::fma(V::load(p.x + r * p.x_sm + k), wf, acc[r][0]);
  }
  const float scale = p.w_scale[n], bias = p.bias ? p.bias[n] : 0.0f;
  for (int r = 0; r < R; ++r) {
    for (int j = 2 * (J / 2) - 1; j >= 1; j -= 2) acc[r][j - 1] = V::add(acc[r][j - 1], acc[r][j]);
    typename V::T t = acc[r][0];
    for (int j = 2; j < J; j += 2) t = V::add(t, acc[r][j]);
    float s = V::hsum(t);
    const float* x = p.x + r * p.x_sm;
    for (int64_t k = kvec; k < K; ++k) s += x[k] * static_cast<float>(w[k]);
    p.y[r * p.y_sm + n] = s * scale + bias;
  }
}

// Rows n_begin .. n_end - 1 as V::kStreams interleaved runs: the range is cut into kStreams contiguous
// parts and the rows are taken from each part in turn (part 0's first row, part 1's first row, ...), so the
// memory system sees kStreams sequential weight streams instead of one.  Why: one stream per core left
// DRAM bandwidth unused on the Sapphire Rapids class Xeon: over the 57 decode GEMVs of an 8-layer Llama-style
// model (396 MB of int8 weight, 2 threads) 2 streams ran 1.05x (q1-q3 1.02-1.11x, 15 interleaved reps)
// the speed of 1 through Int8Linear, and 1.12x in a C++ loop over the same shapes; 3 and 4 streams
// were no better than 1.  The AVX2 unit keeps 1 until it is measured on an AVX2 machine.  Each row's arithmetic is unchanged, so
// results are the same bit for bit whatever kStreams is.
template <class V, int R>
void wo_gemv_rows(const Int8LinearWOProblem& p, int64_t n_begin, int64_t n_end) {
  constexpr int S = V::kStreams;
  const int64_t len = n_end - n_begin, seg = ceil_div(len, int64_t{S});
  for (int64_t i = 0; i < seg; ++i)
    for (int s = 0; s < S; ++s) {
      const int64_t n = n_begin + s * seg + i;
      if (n < n_end) wo_gemv_row<V, R>(p, n);
    }
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
