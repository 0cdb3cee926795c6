// The weight-only kernel bodies for M >= 3, compiled once per ISA translation
// unit (int8_linear_wo_generic.cpp, _avx2.cpp, _avx512vnni.cpp) with that
// unit's target flags; everything is in an anonymous namespace inside the
// unit's capability namespace (common.h), so no AVX-512 instantiation can
// leak into the generic build.
//
// Dot-product formulation, like int8_mm: a register tile of outputs, each
// kept as one vector of lane partial sums, reduced at the end.  Per vector of
// k it converts the tile's weight bytes to float once and reuses them for
// every row of x in the tile.
//   run_int8_linear_wo    the generic unit: a 4 x 4 tile of 16-lane sums as
//                         plain loops the compiler may vectorize;
//   run_int8_linear_wo_v  the SIMD units: the same tile over the GEMV's vector
//                         traits, so every partial sum is a register (below).
#pragma once

#include <omp.h>

#include <algorithm>
#include <array>
#include <utility>

#include "common.h"
#include "tile_table.h"
#include "int8_linear_wo.h"

namespace llmaccel {
inline namespace LLMACCEL_CPU_CAPABILITY {  // see common.h
namespace {

constexpr int kWoMR = 4, kWoNR = 4, kWoL = 16;

template <int R, int C>
void wo_tile(const llmaccel::Int8LinearWOProblem& p, int64_t m0, int64_t n0) {
  const int64_t K = p.K;
  float acc[R][C][kWoL] = {};
  const int64_t kfull = K / kWoL * kWoL;
  for (int64_t k = 0; k < kfull; k += kWoL) {
    float wf[C][kWoL];
    for (int c = 0; c < C; ++c) {
      const int8_t* wr = p.w + (n0 + c) * p.ldw + k;
      for (int l = 0; l < kWoL; ++l) wf[c][l] = static_cast<float>(wr[l]);
    }
    for (int r = 0; r < R; ++r) {
      const float* xr = p.x + (m0 + r) * p.x_sm + k;
      for (int c = 0; c < C; ++c)
        for (int l = 0; l < kWoL; ++l) acc[r][c][l] += xr[l] * wf[c][l];
    }
  }
  for (int r = 0; r < R; ++r) {
    float* yr = p.y + (m0 + r) * p.y_sm;
    for (int c = 0; c < C; ++c) {
      float s = 0.0f;
      for (int l = 0; l < kWoL; ++l) s += acc[r][c][l];
      const int8_t* wr = p.w + (n0 + c) * p.ldw;
      const float* xr = p.x + (m0 + r) * p.x_sm;
      for (int64_t k = kfull; k < K; ++k) s += xr[k] * static_cast<float>(wr[k]);
      yr[n0 + c] = s * p.w_scale[n0 + c] + (p.bias ? p.bias[n0 + c] : 0.0f);
    }
  }
}

using WoTileFn = void (*)(const llmaccel::Int8LinearWOProblem&, int64_t, int64_t);

template <int R, int C>
struct WoTile {
  static void run(const llmaccel::Int8LinearWOProblem& p, int64_t m0, int64_t n0) { wo_tile<R, C>(p, m0, n0); }
};

void run_int8_linear_wo(const llmaccel::Int8LinearWOProblem& p) {
  static constexpr TileTable<kWoMR, kWoNR, WoTile> table;
  const int64_t ngroups = llmaccel::ceil_div(p.N, kWoNR), ntiles = llmaccel::ceil_div(p.M, kWoMR);
  // Column groups outermost: a thread streams its share of the weight once
  // and reuses each group (4 rows of W, in L1) for every row tile of x.
#pragma omp parallel for num_threads(p.nthreads) schedule(static) collapse(2)
  for (int64_t g = 0; g < ngroups; ++g) {
    for (int64_t t = 0; t < ntiles; ++t) {
      const int64_t n0 = g * kWoNR, m0 = t * kWoMR;
      const int C = static_cast<int>(std::min<int64_t>(kWoNR, p.N - n0));
      const int R = static_cast<int>(std::min<int64_t>(kWoMR, p.M - m0));
      table.fn[R - 1][C - 1](p, m0, n0);
    }
  }
}

// ---------------------------------------------------------------------------
// The SIMD units' register tile, written once over the GEMV's vector traits V
// (int8_linear_wo_gemv.h: T, L, zero, load_i8, loadu, fma, hsum) plus the tile
// shape V::kMR x V::kNR (rows of x x rows of W).  The scalar body above left
// the vectorization to the compiler, and GCC 12 kept its 4 x 4 x 16 partial
// sums in memory (4 FMAs with memory operands per 16-k step instead of 16 in
// registers): 24 GFLOP/s per core on a Sapphire Rapids class Xeon at M = 32,
// K = N = 2048, slower than fp32 MKL from M = 16 on.  Here every partial sum
// is one register: per V::W-k step, kNR weight vectors are converted once
// and each of kMR x vectors meets all of them (kMR * kNR FMAs).
//   y[m][n] = w_scale[n] * (sum of the lanes of acc[m][n] + the scalar k tail) + bias[n]
template <class V, int R, int C>
void wo_tile_v(const llmaccel::Int8LinearWOProblem& p, int64_t m0, int64_t n0) {
  constexpr int64_t L = V::W;
  const int64_t K = p.K, kvec = K / L * L;
  const int8_t* w[C];
  const float* x[R];
  for (int c = 0; c < C; ++c) w[c] = p.w + (n0 + c) * p.ldw;
  for (int r = 0; r < R; ++r) x[r] = p.x + (m0 + r) * p.x_sm;
  typename V::T acc[R][C];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) acc[r][c] = V::zero();
  for (int64_t k = 0; k < kvec; k += L) {
    typename V::T wf[C];
    for (int c = 0; c < C; ++c) wf[c] = V::load_i8(w[c] + k);
    for (int r = 0; r < R; ++r) {
      const typename V::T xv = V::load(x[r] + k);
      for (int c = 0; c < C; ++c) acc[r][c] = V::fma(xv, wf[c], acc[r][c]);
    }
  }
  for (int r = 0; r < R; ++r) {
    float* yr = p.y + (m0 + r) * p.y_sm;
    for (int c = 0; c < C; ++c) {
      float s = V::hsum(acc[r][c]);
      for (int64_t k = kvec; k < K; ++k) s += x[r][k] * static_cast<float>(w[c][k]);
      yr[n0 + c] = s * p.w_scale[n0 + c] + (p.bias ? p.bias[n0 + c] : 0.0f);
    }
  }
}

template <class V>
struct WoTileV {
  template <int R, int C>
  struct At {
    static void run(const llmaccel::Int8LinearWOProblem& p, int64_t m0, int64_t n0) { wo_tile_v<V, R, C>(p, m0, n0); }
  };
};

// The driver of run_int8_linear_wo with the tile above: column groups of kNR
// weight rows outermost (a thread streams its share of W once and reuses each
// group, in L1, for every row tile of x, which stays in L2).
template <class V>
void run_int8_linear_wo_v(const llmaccel::Int8LinearWOProblem& p) {
  static constexpr TileTable<V::kMR, V::kNR, WoTileV<V>::template At> table;
  const int64_t ngroups = llmaccel::ceil_div(p.N, int64_t(V::kNR)), ntiles = llmaccel::ceil_div(p.M, int64_t(V::kMR));
#pragma omp parallel for num_threads(p.nthreads) schedule(static) collapse(2)
  for (int64_t g = 0; g < ngroups; ++g) {
    for (int64_t t = 0; t < ntiles; ++t) {
      const int64_t n0 = g * V::kNR, m0 = t * V::kMR;
      const int C = static_cast<int>(std::min<int64_t>(V::kNR, p.N - n0));
      const int R = static_cast<int>(std::min<int64_t>(V::kMR, p.M - m0));
      table.fn[R - 1][C - 1](p, m0, n0);
    }
  }
}

}  // namespace
}  // namespace LLMACCEL_CPU_CAPABILITY
}  // namespace llmaccel
