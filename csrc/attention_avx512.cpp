// Attention forward kernels for AVX-512 CPUs (Skylake-X and later, Zen 4).
// Built with the _avx512vnni.cpp flag set; only called when CPUID reports
// AVX-512 F/BW/VL/VNNI (see attention.cpp).  Only AVX-512F instructions are
// used; the name just selects the flags.
//
// S = Q K^T: K^T is packed per kv block (16 x 16 in-register transposes), so
// a micro-kernel of R <= 6 query rows x C <= 4 vectors (64 keys) keeps 24
// accumulators in registers and, per d, issues C loads of K^T and R
// broadcasts of Q for R * C FMAs.
// Decode-sized M (qk_direct): 4 keys x R <= 4 rows of d-vector accumulators
// straight from the K rows, reduced by one unpack/shuffle-add tree.
// O = alpha O + P V: R <= 6 rows x C <= 4 vectors of Dv; per key, C loads of
// V (read in place when its rows are contiguous) and R broadcasts of P; with
// a single row tile, V is walked once in L1-sized chunks of keys.
// Backward (attention_bwd_driver.h): the same qk / pv / exp_sum, plus pvt
// (o += P^T v: R <= 6 keys x C <= 4 vectors, broadcasts of P read transposed).
// exp2: 2^x = 2^n 2^f, n = round(x), |f| <= 1/2, 2^f by the Cephes degree-6
// polynomial (max relative error ~1.7e-7), then vscalefps by n.
#include <immintrin.h>

#include "attention_bwd_driver.h"

namespace llmaccel {
inline namespace LLMACCEL_CPU_CAPABILITY {  // see common.h
namespace {

// Vector traits for exp2_poly (exp2_poly.h).
struct F16 {
  using T = __m512;
  static __m512 set1(float c) { return _mm512_set1_ps(c); }
  static __m512 fma(__m512 a, __m512 b, __m512 c) { return _mm512_fmadd_ps(a, b, c); }
};

inline __m512 exp2v(__m512 x) {
  // Below -126 the result is 0 (exactly; also for -inf).  NaN propagates.
  const __mmask16 keep = ~_mm512_cmp_ps_mask(x, _mm512_set1_ps(-126.0f), _CMP_LT_OQ);
  x = _mm512_min_ps(_mm512_set1_ps(128.0f), x);  // operand order: a NaN x passes through
  const __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(x, n);
  const __m512 p = exp2_poly<F16>(f);
  return _mm512_maskz_scalef_ps(keep, p, n);
}

// acc += a * b.  Inline asm with the accumulator tied in place ("+v"), and
// every loop over the tile fully unrolled by pragma (so the accumulator
// array is scalarized into registers): without both, GCC 12 kept the 24
// accumulators on the stack and stored them back on every iteration
// (the tiles ran at ~1/4 of their speed).  Same fix as int8_mm_avx512vnni.cpp.
inline __attribute__((always_inline)) void fma(__m512& acc, __m512 a, __m512 b) {
  asm("vfmadd231ps %[b], %[a], %[acc]" : [acc] "+v"(acc) : [a] "v"(a), [b] "v"(b));
}

inline __mmask16 tail_mask(int64_t n) { return n >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << n) - 1); }

// In-register transpose of 16 rows of 16 floats.
inline __attribute__((always_inline)) void transpose16(__m512 (&r)[16]) {
  __m512 t[16];
#pragma GCC unroll 16
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
#pragma GCC unroll 16
  for (int i = 0; i < 16; i += 4) {
    const __m512d a = _mm512_castps_pd(t[i]), b = _mm512_castps_pd(t[i + 1]);
    const __m512d c = _mm512_castps_pd(t[i + 2]), d = _mm512_castps_pd(t[i + 3]);
    r[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
    r[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
    r[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
    r[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
  }
  // r[4q + c] now holds, in each 128-bit lane L, column c of rows 4q..4q+3
  // for the lane's 4 columns (4L..4L+3).  Gather lanes across the 4 groups.
#pragma GCC unroll 4
  for (int c = 0; c < 4; ++c) {
    t[c] = _mm512_shuffle_f32x4(r[c], r[4 + c], 0x88);       // lanes 0,2 of group 0 | 0,2 of group 1
    t[4 + c] = _mm512_shuffle_f32x4(r[c], r[4 + c], 0xdd);   // lanes 1,3
    t[8 + c] = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0x88);
    t[12 + c] = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0xdd);
  }
#pragma GCC unroll 4
  for (int c = 0; c < 4; ++c) {
    r[c] = _mm512_shuffle_f32x4(t[c], t[8 + c], 0x88);            // lane 0 of all groups: column c
    r[4 + c] = _mm512_shuffle_f32x4(t[4 + c], t[12 + c], 0x88);   // lane 1: column 4 + c
    r[8 + c] = _mm512_shuffle_f32x4(t[c], t[8 + c], 0xdd);        // lane 2: column 8 + c
    r[12 + c] = _mm512_shuffle_f32x4(t[4 + c], t[12 + c], 0xdd);  // lane 3: column 12 + c
  }
}

// pack_kt fetches K rows this far ahead into L2.
constexpr int64_t kPrefetchRows = 32;
// qk_direct (decode, K from memory) fetches the next group of 4 rows with
// T0 and the group 12 rows ahead with T2.  Measured on Zen 4, decode-gqa's
// 8 x 32 MB caches, K+V GB/s with 1 / 2 threads: no prefetch 10.4 / 19,
// T0 at 4 rows 13.5 / 26.6, plus T2 at 12 rows 16.8 / 31 (at 16: 16.3 / 30,
// 24: 16.0 / 30).  T0 alone further ahead (6, 8, 16 rows) was worse than
// none, and any software prefetch of V (in pv) slowed it down.
constexpr int64_t kDirectPrefetch = 4, kDirectPrefetchFar = 12;

template <int R, int C>
void qk_tile(const float* q, int64_t ldq, const float* kt, int64_t ldkt, int64_t D, float* s, int64_t lds) {
  __m512 acc[R][C];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
  #pragma GCC unroll 8
    for (int c = 0; c < C; ++c) acc[r][c] = _mm512_setzero_ps();
  for (int64_t d = 0; d < D; ++d) {
    __m512 kv[C];
  #pragma GCC unroll 8
    for (int c = 0; c < C; ++c) kv[c] = _mm512_loadu_ps(kt + d * ldkt + 16 * c);
  #pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512 qb = _mm512_set1_ps(q[r * ldq + d]);
#pragma GCC unroll 8
      for (int c = 0; c < C; ++c) fma(acc[r][c], qb, kv[c]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
  #pragma GCC unroll 8
    for (int c = 0; c < C; ++c) _mm512_storeu_ps(s + r * lds + 16 * c, acc[r][c]);
}

// s[r][j0 + jj] for R <= 4 rows and 4 keys at a time, straight from the K
// rows: 4 x R vector accumulators over d, then one transpose-and-add tree
// that leaves row r's 4 sums in 128-bit lane r.
template <int R>
void qk_direct_tile(int64_t n, int64_t D, const float* q, int64_t ldq, const float* k, int64_t k_sl, float* s,
                    int64_t lds) {
  const int64_t k_lines = llmaccel::ceil_div(D, 16);
  for (int64_t j0 = 0; j0 < n; j0 += 4) {
    const int64_t nj = std::min<int64_t>(4, n - j0);
    const float* kr[4];
#pragma GCC unroll 4
    for (int jj = 0; jj < 4; ++jj) kr[jj] = k + (j0 + std::min<int64_t>(jj, nj - 1)) * k_sl;  // tail: repeat a row
    // K streams from memory: fetch the rows kDirectPrefetch ahead (a
    // prefetch never faults, so rows past the block are harmless).
    for (int64_t jj = 0; jj < 4; ++jj)
      for (int64_t l = 0; l < k_lines; ++l)
        _mm_prefetch(reinterpret_cast<const char*>(k + (j0 + kDirectPrefetch + jj) * k_sl + 16 * l), _MM_HINT_T0);
    for (int64_t jj = 0; jj < 4; ++jj)
      for (int64_t l = 0; l < k_lines; ++l)
        _mm_prefetch(reinterpret_cast<const char*>(k + (j0 + kDirectPrefetchFar + jj) * k_sl + 16 * l), _MM_HINT_T2);
    // Named accumulators (a[4 r + jj]): GCC kept a 2-D array on the stack.
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0, a8 = a0, a9 = a0,
           a10 = a0, a11 = a0, a12 = a0, a13 = a0, a14 = a0, a15 = a0;
    auto step = [&](int64_t d0, __mmask16 md) __attribute__((always_inline)) {
      const __m512 k0 = _mm512_maskz_loadu_ps(md, kr[0] + d0), k1 = _mm512_maskz_loadu_ps(md, kr[1] + d0),
                   k2 = _mm512_maskz_loadu_ps(md, kr[2] + d0), k3 = _mm512_maskz_loadu_ps(md, kr[3] + d0);
      __m512 qv = _mm512_maskz_loadu_ps(md, q + d0);
      fma(a0, qv, k0), fma(a1, qv, k1), fma(a2, qv, k2), fma(a3, qv, k3);
      if (R > 1) {
        qv = _mm512_maskz_loadu_ps(md, q + ldq + d0);
        fma(a4, qv, k0), fma(a5, qv, k1), fma(a6, qv, k2), fma(a7, qv, k3);
      }
      if (R > 2) {
        qv = _mm512_maskz_loadu_ps(md, q + 2 * ldq + d0);
        fma(a8, qv, k0), fma(a9, qv, k1), fma(a10, qv, k2), fma(a11, qv, k3);
      }
      if (R > 3) {
        qv = _mm512_maskz_loadu_ps(md, q + 3 * ldq + d0);
        fma(a12, qv, k0), fma(a13, qv, k1), fma(a14, qv, k2), fma(a15, qv, k3);
      }
    };
    int64_t d0 = 0;
    for (; d0 + 16 <= D; d0 += 16) step(d0, __mmask16(0xFFFF));
    if (d0 < D) step(d0, tail_mask(D - d0));
    // Pairwise unpack-add (per 128-bit lane), then across the lanes.
    auto ps = [](__m512 x, __m512 y) { return _mm512_add_ps(_mm512_unpacklo_ps(x, y), _mm512_unpackhi_ps(x, y)); };
    auto pd = [](__m512 x, __m512 y) {
      const __m512d a = _mm512_castps_pd(x), b = _mm512_castps_pd(y);
      return _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)), _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));
    };
    const __m512 u0 = pd(ps(a0, a1), ps(a2, a3)), u1 = pd(ps(a4, a5), ps(a6, a7));
    const __m512 u2 = pd(ps(a8, a9), ps(a10, a11)), u3 = pd(ps(a12, a13), ps(a14, a15));
    const __m512 w01 = _mm512_add_ps(_mm512_shuffle_f32x4(u0, u1, 0x88), _mm512_shuffle_f32x4(u0, u1, 0xdd));
    const __m512 w23 = _mm512_add_ps(_mm512_shuffle_f32x4(u2, u3, 0x88), _mm512_shuffle_f32x4(u2, u3, 0xdd));
    const __m512 res = _mm512_add_ps(_mm512_shuffle_f32x4(w01, w23, 0x88), _mm512_shuffle_f32x4(w01, w23, 0xdd));
    alignas(64) float buf[16];
    _mm512_store_ps(buf, res);
    const __mmask8 mj = static_cast<__mmask8>((1u << nj) - 1);
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) _mm_mask_storeu_ps(s + r * lds + j0, mj, _mm_load_ps(buf + 4 * r));
  }
}

template <int R, int C>
void pv_tile(int64_t n, int64_t dv_left, const float* p, int64_t ldp, const float* v, int64_t ldv,
             const float* alpha, float* o, int64_t ldo) {
  __m512 acc[R][C];
  __mmask16 mk[C];
#pragma GCC unroll 8
  for (int c = 0; c < C; ++c) mk[c] = tail_mask(dv_left - 16 * c);
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    const __m512 a = _mm512_set1_ps(alpha[r]);
  #pragma GCC unroll 8
    for (int c = 0; c < C; ++c) acc[r][c] = _mm512_mul_ps(a, _mm512_loadu_ps(o + r * ldo + 16 * c));
  }
  for (int64_t j = 0; j < n; ++j) {
    // No software prefetch of V: on Zen 4 it slowed the decode stream.
    __m512 vv[C];
  #pragma GCC unroll 8
    for (int c = 0; c < C; ++c) vv[c] = _mm512_maskz_loadu_ps(mk[c], v + j * ldv + 16 * c);
  #pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512 pb = _mm512_set1_ps(p[r * ldp + j]);
#pragma GCC unroll 8
      for (int c = 0; c < C; ++c) fma(acc[r][c], pb, vv[c]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
  #pragma GCC unroll 8
    for (int c = 0; c < C; ++c) _mm512_storeu_ps(o + r * ldo + 16 * c, acc[r][c]);
}

// Backward: o[r][:] += sum_{i < m} p[i][r] v[i] for R keys r (P used transposed: dV += P^T dO,
// dK += dS^T Q).  Per query row i: C loads of v and R broadcasts of P for R * C FMAs.
template <int R, int C>
void pvt_tile(int64_t m, int64_t dv_left, const float* p, int64_t ldp, const float* v, int64_t ldv, float* o,
              int64_t ldo) {
  __m512 acc[R][C];
  __mmask16 mk[C];
#pragma GCC unroll 8
  for (int c = 0; c < C; ++c) mk[c] = tail_mask(dv_left - 16 * c);
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
  #pragma GCC unroll 8
    for (int c = 0; c < C; ++c) acc[r][c] = _mm512_loadu_ps(o + r * ldo + 16 * c);
  for (int64_t i = 0; i < m; ++i) {
    __m512 vv[C];
  #pragma GCC unroll 8
    for (int c = 0; c < C; ++c) vv[c] = _mm512_maskz_loadu_ps(mk[c], v + i * ldv + 16 * c);
  #pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512 pb = _mm512_set1_ps(p[i * ldp + r]);
#pragma GCC unroll 8
      for (int c = 0; c < C; ++c) fma(acc[r][c], pb, vv[c]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
  #pragma GCC unroll 8
    for (int c = 0; c < C; ++c) _mm512_storeu_ps(o + r * ldo + 16 * c, acc[r][c]);
}

constexpr int kMR = 6, kNC = 4;
constexpr int64_t kPvChunk = 32;

// Keys a row tile needs: the largest of its rows' limits.
inline int64_t tile_n(const int64_t* row_n, int R) {
  int64_t m = 0;
  for (int r = 0; r < R; ++r) m = std::max(m, row_n[r]);
  return m;
}
alignas(64) constexpr float kOnes[kMR] = {1, 1, 1, 1, 1, 1};


template <int R, int C>
struct QkFn {
  static void run(const float* q, int64_t ldq, const float* kt, int64_t ldkt, int64_t D, float* s, int64_t lds) {
    qk_tile<R, C>(q, ldq, kt, ldkt, D, s, lds);
  }
};
template <int R, int C>
struct PvFn {
  static void run(int64_t n, int64_t dv_left, const float* p, int64_t ldp, const float* v, int64_t ldv,
                  const float* alpha, float* o, int64_t ldo) {
    pv_tile<R, C>(n, dv_left, p, ldp, v, ldv, alpha, o, ldo);
  }
};
template <int R, int C>
struct PvtFn {
  static void run(int64_t m, int64_t dv_left, const float* p, int64_t ldp, const float* v, int64_t ldv, float* o,
                  int64_t ldo) {
    pvt_tile<R, C>(m, dv_left, p, ldp, v, ldv, o, ldo);
  }
};

struct Avx512 {
  static constexpr int VL = 16;

  static void pack_kt(const float* k, int64_t k_sl, int64_t k_sd, int64_t n, int64_t D, float* kt, int64_t ldkt) {
    if (k_sd != 1) return pack_kt_strided<VL>(k, k_sl, k_sd, n, D, kt, ldkt);
    // K arrives from memory (decode, long caches) or L3: prefetch the rows
    // kPrefetchRows ahead into L2; a prefetch never faults, so rows past the
    // block are harmless.
    const int64_t row_lines = llmaccel::ceil_div(D * 4, 64);
    for (int64_t j0 = 0; j0 < n; j0 += 16) {
      const int64_t nj = std::min<int64_t>(16, n - j0);
      for (int64_t i = 0; i < 16 && j0 + kPrefetchRows + i < n + kPrefetchRows; ++i)
        for (int64_t l = 0; l < row_lines; ++l)
          _mm_prefetch(reinterpret_cast<const char*>(k + (j0 + kPrefetchRows + i) * k_sl + 16 * l), _MM_HINT_T1);
      for (int64_t d0 = 0; d0 < D; d0 += 16) {
        const int64_t nd = std::min<int64_t>(16, D - d0);
        const __mmask16 md = tail_mask(nd);
        __m512 r[16];
#pragma GCC unroll 16
        for (int i = 0; i < 16; ++i)
          // Rows past n load nothing (mask 0) from a valid address: branch-free,
          // so the 16 rows stay in registers.
          r[i] = _mm512_maskz_loadu_ps(i < nj ? md : __mmask16(0), k + (j0 + (i < nj ? i : 0)) * k_sl + d0);
        transpose16(r);
        for (int64_t i = 0; i < nd; ++i) _mm512_storeu_ps(kt + (d0 + i) * ldkt + j0, r[i]);
      }
    }
  }

  static void qk(int64_t M, int64_t n, int64_t D, const float* q, int64_t ldq, const float* kt, int64_t ldkt,
                 float* s, int64_t lds, const int64_t* row_n) {
    static constexpr TileTable<kMR, kNC, QkFn> table{};
    const int64_t nv = llmaccel::ceil_div(n, 16);
    for (int64_t c0 = 0; c0 < nv; c0 += kNC) {
      for (int64_t r0 = 0; r0 < M; r0 += kMR) {
        const int R = static_cast<int>(std::min<int64_t>(kMR, M - r0));
        const int64_t nv_t = row_n ? llmaccel::ceil_div(tile_n(row_n + r0, R), 16) : nv;
        if (c0 >= nv_t) continue;
        const int C = static_cast<int>(std::min<int64_t>(kNC, nv_t - c0));
        table.fn[R - 1][C - 1](q + r0 * ldq, ldq, kt + 16 * c0, ldkt, D, s + r0 * lds + 16 * c0, lds);
      }
    }
  }

  static void qk_direct(int64_t M, int64_t n, int64_t D, const float* q, int64_t ldq, const float* k, int64_t k_sl,
                        float* s, int64_t lds) {
    using Fn = void (*)(int64_t, int64_t, const float*, int64_t, const float*, int64_t, float*, int64_t);
    static constexpr Fn fns[4] = {&qk_direct_tile<1>, &qk_direct_tile<2>, &qk_direct_tile<3>, &qk_direct_tile<4>};
    for (int64_t r0 = 0; r0 < M; r0 += 4)
      fns[std::min<int64_t>(4, M - r0) - 1](n, D, q + r0 * ldq, ldq, k, k_sl, s + r0 * lds, lds);
  }

  static float rowmax(const float* x, int64_t n) {
    const __m512 ninf = _mm512_set1_ps(kNegInf);
    __m512 m = ninf;
    int64_t j = 0;
    for (; j + 16 <= n; j += 16) m = _mm512_max_ps(m, _mm512_loadu_ps(x + j));
    if (j < n) m = _mm512_max_ps(m, _mm512_mask_loadu_ps(ninf, tail_mask(n - j), x + j));
    return _mm512_reduce_max_ps(m);
  }

  static float exp_sum(float* x, int64_t n, float mx) {
    const __m512 m = _mm512_set1_ps(mx), l2e = _mm512_set1_ps(kLog2e);
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    int64_t j = 0;
    for (; j + 32 <= n; j += 32) {
      const __m512 y0 = exp2v(_mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(x + j), m), l2e));
      const __m512 y1 = exp2v(_mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(x + j + 16), m), l2e));
      _mm512_storeu_ps(x + j, y0);
      _mm512_storeu_ps(x + j + 16, y1);
      s0 = _mm512_add_ps(s0, y0);
      s1 = _mm512_add_ps(s1, y1);
    }
    for (; j < n; j += 16) {
      const __mmask16 mk = tail_mask(n - j);
      const __m512 y = exp2v(_mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(mk, x + j), m), l2e));
      _mm512_mask_storeu_ps(x + j, mk, y);
      s0 = _mm512_add_ps(s0, _mm512_maskz_mov_ps(mk, y));
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
  }

  static void pv(int64_t M, int64_t n, int64_t Dv, const float* p, int64_t ldp, const float* v, int64_t ldv,
                 const float* alpha, float* o, int64_t ldo, const int64_t* row_n) {
    static constexpr TileTable<kMR, kNC, PvFn> table{};
    const int64_t nv = llmaccel::ceil_div(Dv, 16);
    if (M <= kMR && nv > kNC) {
      // One row tile (decode) but several column tiles: walk V once, in
      // chunks of keys that stay in L1 while each column tile reads them,
      // instead of streaming every row twice from memory in halves.
      const int R = static_cast<int>(M);
      for (int64_t j0 = 0; j0 < n; j0 += kPvChunk) {
        const int64_t nj = std::min<int64_t>(kPvChunk, n - j0);
        for (int64_t c0 = 0; c0 < nv; c0 += kNC) {
          const int C = static_cast<int>(std::min<int64_t>(kNC, nv - c0));
          // alpha rescales O once, with the first chunk.
          table.fn[R - 1][C - 1](nj, Dv - 16 * c0, p + j0, ldp, v + j0 * ldv + 16 * c0, ldv, j0 == 0 ? alpha : kOnes,
                                 o + 16 * c0, ldo);
        }
      }
      return;
    }
    for (int64_t c0 = 0; c0 < nv; c0 += kNC) {
      const int C = static_cast<int>(std::min<int64_t>(kNC, nv - c0));
      for (int64_t r0 = 0; r0 < M; r0 += kMR) {
        const int R = static_cast<int>(std::min<int64_t>(kMR, M - r0));
        // Keys past every row's limit have P = 0: skip them (n = 0 still rescales O).
        table.fn[R - 1][C - 1](row_n ? tile_n(row_n + r0, R) : n, Dv - 16 * c0, p + r0 * ldp, ldp, v + 16 * c0, ldv,
                               alpha + r0, o + r0 * ldo + 16 * c0, ldo);
      }
    }
  }

  static void pvt(int64_t n, int64_t m, int64_t Dv, const float* p, int64_t ldp, const float* v, int64_t ldv,
                  float* o, int64_t ldo) {
    static constexpr TileTable<kMR, kNC, PvtFn> table{};
    const int64_t nv = llmaccel::ceil_div(Dv, 16);
    for (int64_t c0 = 0; c0 < nv; c0 += kNC) {
      const int C = static_cast<int>(std::min<int64_t>(kNC, nv - c0));
      for (int64_t r0 = 0; r0 < n; r0 += kMR) {
        const int R = static_cast<int>(std::min<int64_t>(kMR, n - r0));
        table.fn[R - 1][C - 1](m, Dv - 16 * c0, p + r0, ldp, v + 16 * c0, ldv, o + r0 * ldo + 16 * c0, ldo);
      }
    }
  }

  static void exp2(int64_t n, const float* x, float* y) {
    int64_t j = 0;
    for (; j < n; j += 16) {
      const __mmask16 mk = tail_mask(n - j);
      _mm512_mask_storeu_ps(y + j, mk, exp2v(_mm512_maskz_loadu_ps(mk, x + j)));
    }
  }
};

}  // namespace
}  // namespace LLMACCEL_CPU_CAPABILITY

void attention_run_avx512(const AttentionProblem& p) { run_attention<Avx512>(p); }
void attention_bwd_avx512(const AttentionBwdProblem& p) { run_attention_bwd<Avx512>(p); }
void attention_exp2_avx512(int64_t n, const float* x, float* y) { Avx512::exp2(n, x, y); }
}  // namespace llmaccel
