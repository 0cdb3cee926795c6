// Attention kernels (forward, split-KV decode, backward) for CPUs with AVX2
// and FMA: Haswell .. Alder Lake client, Zen 1-3 (and every AVX-512 CPU).
// Built with the _avx2.cpp flag set (-mavx2 -mfma -mf16c); only called when
// CPUID reports AVX2 and FMA (see attention.cpp).  The loop nests are the
// shared drivers (attention_driver.h, attention_bwd_driver.h); this file is
// the ISA policy, 8 floats per vector.
//
// AVX2 has 16 ymm registers (AVX-512: 32) and no mask registers, so the tiles
// are smaller than the AVX-512 ones and ragged ends use vmaskmovps
// (_mm256_maskload_ps reads nothing, and faults on nothing, in masked lanes).
//
// S = Q K^T: K^T is packed per kv block (8 x 8 in-register transposes), so a
// micro-kernel of R <= 4 query rows x C <= 3 vectors (24 keys) keeps 12
// accumulators + 3 K^T vectors + 1 broadcast of Q = 16 registers and, per d,
// issues C loads of K^T and R broadcasts of Q for R * C FMAs.
// Decode-sized M (qk_direct): groups of 4 keys straight from the K rows; for
// each group, pairs of query rows accumulate 4 keys x 2 rows of d-vectors
// (8 accumulators + 4 K + 1 Q = 13 registers), reduced by one unpack/add
// tree.  The group's 4 K rows stay in L1 while every row pair reads them, so
// K streams from memory once whatever M is.
// O = alpha O + P V: R <= 4 rows x C <= 3 vectors of Dv; per key, C loads of
// V (read in place when its rows are contiguous) and R broadcasts of P; only
// the last vector of a ragged Dv is a masked load.  Decode-sized M walks V
// once, in L1-sized chunks of keys that every (row, column) tile reads,
// prefetching the next chunk.
// Backward (attention_bwd_driver.h): the same qk / pv / exp_sum, plus pvt
// (o += P^T v: R <= 4 keys x C <= 3 vectors, broadcasts of P read transposed).
// exp2: 2^x = 2^n 2^f, n = round(x), |f| <= 1/2, 2^f by the Cephes degree-6
// polynomial (max relative error ~1.7e-7), then n added to the exponent bits.
#include <immintrin.h>

#include "attention_bwd_driver.h"
#include "simd_avx2.h"

namespace llmaccel {
inline namespace LLMACCEL_CPU_CAPABILITY {  // see common.h
namespace {

constexpr int kMR = 4, kNC = 3;  // register tile: rows x vectors (see the header)
constexpr int64_t kPvChunk = 32;  // decode pv: keys per L1 chunk of V (32 x 512 B for Dv = 128)
constexpr int64_t kPvPrefillChunk = 64;  // prefill pv: keys per L1 chunk of V (64 x 256 B for Dv = 64)

// Lanes [0, n) all ones (n clamped to [0, 8]): the mask operand of vmaskmovps.
inline __m256i tail_mask(int64_t n) {
  const int m = static_cast<int>(std::max<int64_t>(0, std::min<int64_t>(n, 8)));
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(m), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

inline float hmax(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Vector traits for exp2_poly (exp2_poly.h).
struct F8 {
  using T = __m256;
  static __m256 set1(float c) { return _mm256_set1_ps(c); }
  static __m256 fma(__m256 a, __m256 b, __m256 c) { return _mm256_fmadd_ps(a, b, c); }
};

inline __m256 exp2v(__m256 x) {
  // Lanes below -126 (also -inf) become exactly 0; "not less than,
  // unordered" keeps NaN lanes, which propagate.
  const __m256 keep = _mm256_cmp_ps(x, _mm256_set1_ps(-126.0f), _CMP_NLT_UQ);
  x = _mm256_min_ps(_mm256_set1_ps(128.0f), x);  // operand order: minps returns a NaN x
  const __m256 n = _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m256 f = _mm256_sub_ps(x, n);
  const __m256 p = exp2_poly<F8>(f);
  // 2^n p by adding n to p's biased exponent.  In the kept range this never
  // leaves the normal numbers: p = 2^f is in [2^-1/2, 2^1/2] (exponent -1 or
  // 0); n = -126 only for x in [-126, -125.5], where f >= 0 so p >= 1
  // (exponent field 1, 2^-126 at worst); n = 128 only for x >= 127.5, where
  // p < 1 (field 254) except at x = 128, where p = 1 exactly and the bits
  // are those of +inf.  A NaN x converts to 0x80000000, which the shift
  // turns into 0: p (NaN) passes unchanged.
  const __m256i e = _mm256_slli_epi32(_mm256_cvtps_epi32(n), 23);
  const __m256 y = _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(p), e));
  return _mm256_and_ps(keep, y);
}

// In-register transpose of 8 rows of 8 floats.
inline __attribute__((always_inline)) void transpose8(__m256 (&r)[8]) {
  __m256 t[8], u[8];
#pragma GCC unroll 4
  for (int i = 0; i < 8; i += 2) {  // t[i]: rows i, i+1 interleaved (columns 0,1 | 4,5; hi: 2,3 | 6,7)
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
#pragma GCC unroll 2
  for (int g = 0; g < 8; g += 4) {  // u[g + c]: column c (low lane) and c + 4 (high lane) of rows g..g+3
    u[g + 0] = _mm256_shuffle_ps(t[g], t[g + 2], 0x44);
    u[g + 1] = _mm256_shuffle_ps(t[g], t[g + 2], 0xEE);
    u[g + 2] = _mm256_shuffle_ps(t[g + 1], t[g + 3], 0x44);
    u[g + 3] = _mm256_shuffle_ps(t[g + 1], t[g + 3], 0xEE);
  }
#pragma GCC unroll 4
  for (int c = 0; c < 4; ++c) {
    r[c] = _mm256_permute2f128_ps(u[c], u[4 + c], 0x20);
    r[4 + c] = _mm256_permute2f128_ps(u[c], u[4 + c], 0x31);
  }
}

// pack_kt fetches K rows this far ahead into L2 (as the AVX-512 variant).
constexpr int64_t kPrefetchRows = 32;
// qk_direct fetches the next group of 4 rows with T0 and the group 12 rows
// ahead with T2: the distances measured best for the AVX-512 variant's
// decode stream on Zen 4 (attention_avx512.cpp), kept here.
constexpr int64_t kDirectPrefetch = 4, kDirectPrefetchFar = 12;

// s[r][0:8C) = q[r] . kt[:, 0:8C) for R rows.
template <int R, int C>
struct QkTile {
  static void run(const float* q, int64_t ldq, const float* kt, int64_t ldkt, int64_t D, float* s, int64_t lds) {
    __m256 acc[R][C];
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
      for (int c = 0; c < C; ++c) acc[r][c] = _mm256_setzero_ps();
    for (int64_t d = 0; d < D; ++d) {
      __m256 kv[C];
#pragma GCC unroll 4
      for (int c = 0; c < C; ++c) kv[c] = _mm256_loadu_ps(kt + d * ldkt + 8 * c);
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) {
        const __m256 qb = _mm256_broadcast_ss(q + r * ldq + d);
#pragma GCC unroll 4
        for (int c = 0; c < C; ++c) acc[r][c] = _mm256_fmadd_ps(qb, kv[c], acc[r][c]);
      }
    }
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
      for (int c = 0; c < C; ++c) _mm256_storeu_ps(s + r * lds + 8 * c, acc[r][c]);
  }
};

// o[r][0:8C) = alpha[r] o[r] + sum_{j < n} p[r][j] v[j][0:8C) for R rows.
// Tail: the last vector holds dv_left - 8 (C - 1) < 8 columns (masked load
// of V; o's padding columns may be written).
template <int R, int C, bool Tail>
struct PvTile {
  static void run(int64_t n, int64_t dv_left, const float* p, int64_t ldp, const float* v, int64_t ldv,
                  const float* alpha, float* o, int64_t ldo) {
    const __m256i mk = tail_mask(dv_left - 8 * (C - 1));
    __m256 acc[R][C];
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      const __m256 a = _mm256_broadcast_ss(alpha + r);
#pragma GCC unroll 4
      for (int c = 0; c < C; ++c) acc[r][c] = _mm256_mul_ps(a, _mm256_loadu_ps(o + r * ldo + 8 * c));
    }
    for (int64_t j = 0; j < n; ++j) {
      __m256 vv[C];
#pragma GCC unroll 4
      for (int c = 0; c < C; ++c)
        vv[c] = Tail && c == C - 1 ? _mm256_maskload_ps(v + j * ldv + 8 * c, mk) : _mm256_loadu_ps(v + j * ldv + 8 * c);
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) {
        const __m256 pb = _mm256_broadcast_ss(p + r * ldp + j);
#pragma GCC unroll 4
        for (int c = 0; c < C; ++c) acc[r][c] = _mm256_fmadd_ps(pb, vv[c], acc[r][c]);
      }
    }
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
      for (int c = 0; c < C; ++c) _mm256_storeu_ps(o + r * ldo + 8 * c, acc[r][c]);
  }
};

// Backward: o[r][0:8C) += sum_{i < m} p[i][r] v[i][0:8C) for R keys r (P used
// transposed: dV += P^T dO, dK += dS^T Q).  Tail as in PvTile.
template <int R, int C, bool Tail>
struct PvtTile {
  static void run(int64_t m, int64_t dv_left, const float* p, int64_t ldp, const float* v, int64_t ldv, float* o,
                  int64_t ldo) {
    const __m256i mk = tail_mask(dv_left - 8 * (C - 1));
    __m256 acc[R][C];
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
      for (int c = 0; c < C; ++c) acc[r][c] = _mm256_loadu_ps(o + r * ldo + 8 * c);
    for (int64_t i = 0; i < m; ++i) {
      __m256 vv[C];
#pragma GCC unroll 4
      for (int c = 0; c < C; ++c)
        vv[c] = Tail && c == C - 1 ? _mm256_maskload_ps(v + i * ldv + 8 * c, mk) : _mm256_loadu_ps(v + i * ldv + 8 * c);
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) {
        const __m256 pb = _mm256_broadcast_ss(p + i * ldp + r);
#pragma GCC unroll 4
        for (int c = 0; c < C; ++c) acc[r][c] = _mm256_fmadd_ps(pb, vv[c], acc[r][c]);
      }
    }
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
      for (int c = 0; c < C; ++c) _mm256_storeu_ps(o + r * ldo + 8 * c, acc[r][c]);
  }
};

// Run-time (R, C) -> tile instantiation (tile_table.h); pv and pvt also by
// whether the last vector is ragged (masked loads and stores).
template <int R, int C> using PvFull = PvTile<R, C, false>;
template <int R, int C> using PvTail = PvTile<R, C, true>;
template <int R, int C> using PvtFull = PvtTile<R, C, false>;
template <int R, int C> using PvtTail = PvtTile<R, C, true>;
constexpr TileTable<kMR, kNC, QkTile> kQk{};
constexpr TileTable<kMR, kNC, PvFull> kPvFull{};
constexpr TileTable<kMR, kNC, PvTail> kPvTail{};
constexpr TileTable<kMR, kNC, PvtFull> kPvtFull{};
constexpr TileTable<kMR, kNC, PvtTail> kPvtTail{};

// Keys a row tile needs: the largest of its rows' limits.
inline int64_t tile_n(const int64_t* row_n, int R) {
  int64_t m = 0;
  for (int r = 0; r < R; ++r) m = std::max(m, row_n[r]);
  return m;
}
alignas(32) constexpr float kOnes[kMR] = {1, 1, 1, 1};

// 4 keys (rows kr[0..3], D floats each) x R <= 2 query rows: returns row 0's
// 4 dot products in the low 128-bit lane and row 1's (R = 2) in the high one.
template <int R>
inline __attribute__((always_inline)) __m256 direct_dots(const float* const (&kr)[4], int64_t D, const float* q,
                                                         int64_t ldq) {
  // Named accumulators (a[4 r + jj]), as in the AVX-512 variant.
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
  auto step = [&](__m256 k0, __m256 k1, __m256 k2, __m256 k3, __m256 q0, __m256 q1) __attribute__((always_inline)) {
    a0 = _mm256_fmadd_ps(q0, k0, a0), a1 = _mm256_fmadd_ps(q0, k1, a1);
    a2 = _mm256_fmadd_ps(q0, k2, a2), a3 = _mm256_fmadd_ps(q0, k3, a3);
    if (R > 1) {
      a4 = _mm256_fmadd_ps(q1, k0, a4), a5 = _mm256_fmadd_ps(q1, k1, a5);
      a6 = _mm256_fmadd_ps(q1, k2, a6), a7 = _mm256_fmadd_ps(q1, k3, a7);
    }
  };
  int64_t d0 = 0;
  for (; d0 + 8 <= D; d0 += 8)
    step(_mm256_loadu_ps(kr[0] + d0), _mm256_loadu_ps(kr[1] + d0), _mm256_loadu_ps(kr[2] + d0),
         _mm256_loadu_ps(kr[3] + d0), _mm256_loadu_ps(q + d0), R > 1 ? _mm256_loadu_ps(q + ldq + d0) : a0);
  if (d0 < D) {  // ragged D: K rows may end at a page boundary, so mask the reads
    const __m256i md = tail_mask(D - d0);
    step(_mm256_maskload_ps(kr[0] + d0, md), _mm256_maskload_ps(kr[1] + d0, md), _mm256_maskload_ps(kr[2] + d0, md),
         _mm256_maskload_ps(kr[3] + d0, md), _mm256_maskload_ps(q + d0, md),
         R > 1 ? _mm256_maskload_ps(q + ldq + d0, md) : a0);
  }
  // Per 128-bit lane: ps(x, y) = [x0+x2, y0+y2, x1+x3, y1+y3], then
  // pd(ps(a0, a1), ps(a2, a3)) = the 4 keys' partial sums of that lane.
  auto ps = [](__m256 x, __m256 y) { return _mm256_add_ps(_mm256_unpacklo_ps(x, y), _mm256_unpackhi_ps(x, y)); };
  auto pd = [](__m256 x, __m256 y) {
    const __m256d a = _mm256_castps_pd(x), b = _mm256_castps_pd(y);
    return _mm256_add_ps(_mm256_castpd_ps(_mm256_unpacklo_pd(a, b)), _mm256_castpd_ps(_mm256_unpackhi_pd(a, b)));
  };
  const __m256 u0 = pd(ps(a0, a1), ps(a2, a3));
  const __m256 u1 = R > 1 ? pd(ps(a4, a5), ps(a6, a7)) : u0;
  // Add the two lanes: [u0.lo + u0.hi | u1.lo + u1.hi].
  return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

inline void store_dots(float* s, __m128 x, int64_t nj) {
  if (nj == 4) {
    _mm_storeu_ps(s, x);
    return;
  }
  alignas(16) float buf[4];
  _mm_store_ps(buf, x);
  for (int64_t j = 0; j < nj; ++j) s[j] = buf[j];
}

struct Avx2 {
  static constexpr int VL = 8;

  static void pack_kt(const float* k, int64_t k_sl, int64_t k_sd, int64_t n, int64_t D, float* kt, int64_t ldkt) {
    if (k_sd != 1) return pack_kt_strided<VL>(k, k_sl, k_sd, n, D, kt, ldkt);
    // Prefetch the rows kPrefetchRows ahead into L2 (a prefetch never faults,
    // so rows past the block are harmless).
    const int64_t row_lines = llmaccel::ceil_div(D * 4, 64);
    for (int64_t j0 = 0; j0 < n; j0 += 8) {
      const int64_t nj = std::min<int64_t>(8, n - j0);
      for (int64_t i = 0; i < 8; ++i)
        for (int64_t l = 0; l < row_lines; ++l)
          _mm_prefetch(reinterpret_cast<const char*>(k + (j0 + kPrefetchRows + i) * k_sl + 16 * l), _MM_HINT_T1);
      for (int64_t d0 = 0; d0 < D; d0 += 8) {
        const int64_t nd = std::min<int64_t>(8, D - d0);
        __m256 r[8];
        if (nj == 8 && nd == 8) {
#pragma GCC unroll 8
          for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(k + (j0 + i) * k_sl + d0);
        } else {
          // Rows past n read nothing (zero mask) from a valid address, so
          // the columns j >= n of K^T come out 0.
          const __m256i md = tail_mask(nd), none = _mm256_setzero_si256();
#pragma GCC unroll 8
          for (int i = 0; i < 8; ++i)
            r[i] = _mm256_maskload_ps(k + (j0 + (i < nj ? i : 0)) * k_sl + d0, i < nj ? md : none);
        }
        transpose8(r);
        for (int64_t i = 0; i < nd; ++i) _mm256_storeu_ps(kt + (d0 + i) * ldkt + j0, r[i]);
      }
    }
  }

  static void qk(int64_t M, int64_t n, int64_t D, const float* q, int64_t ldq, const float* kt, int64_t ldkt,
                 float* s, int64_t lds, const int64_t* row_n) {
    const int64_t nv = llmaccel::ceil_div(n, VL);
    for (int64_t c0 = 0; c0 < nv; c0 += kNC) {
      for (int64_t r0 = 0; r0 < M; r0 += kMR) {
        const int R = static_cast<int>(std::min<int64_t>(kMR, M - r0));
        const int64_t nv_t = row_n ? llmaccel::ceil_div(tile_n(row_n + r0, R), VL) : nv;
        if (c0 >= nv_t) continue;  // keys past every row's causal limit: left unwritten
        const int C = static_cast<int>(std::min<int64_t>(kNC, nv_t - c0));
        kQk.fn[R - 1][C - 1](q + r0 * ldq, ldq, kt + VL * c0, ldkt, D, s + r0 * lds + VL * c0, lds);
      }
    }
  }

  static void qk_direct(int64_t M, int64_t n, int64_t D, const float* q, int64_t ldq, const float* k, int64_t k_sl,
                        float* s, int64_t lds) {
    const int64_t k_lines = llmaccel::ceil_div(D, 16);
    for (int64_t j0 = 0; j0 < n; j0 += 4) {
      const int64_t nj = std::min<int64_t>(4, n - j0);
      const float* kr[4];
      for (int jj = 0; jj < 4; ++jj) kr[jj] = k + (j0 + std::min<int64_t>(jj, nj - 1)) * k_sl;  // tail: repeat a row
      for (int64_t jj = 0; jj < 4; ++jj)
        for (int64_t l = 0; l < k_lines; ++l)
          _mm_prefetch(reinterpret_cast<const char*>(k + (j0 + kDirectPrefetch + jj) * k_sl + 16 * l), _MM_HINT_T0);
      for (int64_t jj = 0; jj < 4; ++jj)
        for (int64_t l = 0; l < k_lines; ++l)
          _mm_prefetch(reinterpret_cast<const char*>(k + (j0 + kDirectPrefetchFar + jj) * k_sl + 16 * l),
                       _MM_HINT_T2);
      // Rows in pairs: 4 keys x 4 rows would need 16 accumulators + 4 K +
      // 1 Q registers; the second pair re-reads the 4 K rows from L1.
      int64_t r0 = 0;
      for (; r0 + 2 <= M; r0 += 2) {
        const __m256 x = direct_dots<2>(kr, D, q + r0 * ldq, ldq);
        store_dots(s + r0 * lds + j0, _mm256_castps256_ps128(x), nj);
        store_dots(s + (r0 + 1) * lds + j0, _mm256_extractf128_ps(x, 1), nj);
      }
      if (r0 < M) store_dots(s + r0 * lds + j0, _mm256_castps256_ps128(direct_dots<1>(kr, D, q + r0 * ldq, ldq)), nj);
    }
  }

  static float rowmax(const float* x, int64_t n) {
    const __m256 ninf = _mm256_set1_ps(kNegInf);
    __m256 m0 = ninf, m1 = ninf;
    int64_t j = 0;
    for (; j + 16 <= n; j += 16) {
      m0 = _mm256_max_ps(m0, _mm256_loadu_ps(x + j));
      m1 = _mm256_max_ps(m1, _mm256_loadu_ps(x + j + 8));
    }
    if (j + 8 <= n) {
      m0 = _mm256_max_ps(m0, _mm256_loadu_ps(x + j));
      j += 8;
    }
    if (j < n) {  // masked lanes load 0: replace them by -inf
      const __m256i mk = tail_mask(n - j);
      m1 = _mm256_max_ps(m1, _mm256_blendv_ps(ninf, _mm256_maskload_ps(x + j, mk), _mm256_castsi256_ps(mk)));
    }
    return hmax(_mm256_max_ps(m0, m1));
  }

  static float exp_sum(float* x, int64_t n, float mx) {
    const __m256 m = _mm256_set1_ps(mx), l2e = _mm256_set1_ps(kLog2e);
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 16 <= n; j += 16) {
      const __m256 y0 = exp2v(_mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + j), m), l2e));
      const __m256 y1 = exp2v(_mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + j + 8), m), l2e));
      _mm256_storeu_ps(x + j, y0);
      _mm256_storeu_ps(x + j + 8, y1);
      s0 = _mm256_add_ps(s0, y0);
      s1 = _mm256_add_ps(s1, y1);
    }
    if (j + 8 <= n) {
      const __m256 y = exp2v(_mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + j), m), l2e));
      _mm256_storeu_ps(x + j, y);
      s0 = _mm256_add_ps(s0, y);
      j += 8;
    }
    if (j < n) {
      const __m256i mk = tail_mask(n - j);
      const __m256 y = exp2v(_mm256_mul_ps(_mm256_sub_ps(_mm256_maskload_ps(x + j, mk), m), l2e));
      _mm256_maskstore_ps(x + j, mk, y);
      s1 = _mm256_add_ps(s1, _mm256_and_ps(_mm256_castsi256_ps(mk), y));  // masked lanes hold 2^(-m log2 e)
    }
    return hsum_ps(_mm256_add_ps(s0, s1));
  }

  static void pv(int64_t M, int64_t n, int64_t Dv, const float* p, int64_t ldp, const float* v, int64_t ldv,
                 const float* alpha, float* o, int64_t ldo, const int64_t* row_n) {
    const int64_t nv = llmaccel::ceil_div(Dv, VL);
    const bool ragged = Dv % VL != 0;
    if (M <= kDirectMaxRows && (M > kMR || nv > kNC)) {
      // Decode: several tiles would each stream V from memory.  Walk it once
      // instead, in chunks of keys that stay in L1 while every tile reads
      // them (row_n is ignored: those keys have P = 0).
      const int64_t v_lines = llmaccel::ceil_div(Dv, 16);
      int64_t j0 = 0;
      do {  // n == 0 still rescales O
        const int64_t nj = std::min<int64_t>(kPvChunk, n - j0);
        // Fetch the next chunk into L1 while this one is used.  Measured on
        // Zen 4 (decode 32 q / 8 kv heads, Lk = 4096, D = 128, medians of 300
        // calls on a shared machine): 1.44-1.46 -> 1.22-1.28 ms with 2
        // threads, 3.3-3.9 -> 2.8-3.0 ms with 1.  (The AVX-512 variant found
        // V prefetch harmful; presumably its 64-byte loads keep twice as many
        // V lines in flight per instruction window as these 32-byte ones.)
        const float* next = v + (j0 + kPvChunk) * ldv;
        for (int64_t j = 0; j < kPvChunk; ++j)
          for (int64_t l = 0; l < v_lines; ++l)
            _mm_prefetch(reinterpret_cast<const char*>(next + j * ldv + 16 * l), _MM_HINT_T0);
        for (int64_t c0 = 0; c0 < nv; c0 += kNC) {
          const int C = static_cast<int>(std::min<int64_t>(kNC, nv - c0));
          const bool tail = ragged && c0 + C == nv;
          for (int64_t r0 = 0; r0 < M; r0 += kMR) {
            const int R = static_cast<int>(std::min<int64_t>(kMR, M - r0));
            // alpha rescales O once, with the first chunk.
            (tail ? kPvTail.fn : kPvFull.fn)[R - 1][C - 1](nj, Dv - VL * c0, p + r0 * ldp + j0, ldp, v + j0 * ldv + VL * c0, ldv,
                                       j0 == 0 ? alpha + r0 : kOnes, o + r0 * ldo + VL * c0, ldo);
          }
        }
        j0 += kPvChunk;
      } while (j0 < n);
      return;
    }
    // Prefill: keys in chunks of kPvPrefillChunk, so a chunk of V (64 keys x
    // Dv floats: 16 KB for Dv = 64) stays in L1 while every row tile reads it,
    // and a row tile's chunk of P (4 x 64 floats) stays in L1 across its
    // column tiles.  Without chunks each (row, column) tile streamed all n
    // keys of its V columns (48 KB for Nb = 512) from L2.  O is stored and
    // reloaded between chunks (exact) and rescaled by alpha with the first
    // one, so every accumulator sees the same FMAs in the same order: the
    // result is bit-identical to the unchunked loop.
    for (int64_t j0 = 0;; j0 += kPvPrefillChunk) {
      const int64_t nj = std::min<int64_t>(kPvPrefillChunk, n - j0);
      for (int64_t r0 = 0; r0 < M; r0 += kMR) {
        const int R = static_cast<int>(std::min<int64_t>(kMR, M - r0));
        // Keys past every row's limit have P = 0: skip them (the first chunk
        // still runs with 0 keys to rescale O).
        const int64_t nt = std::min<int64_t>(nj, (row_n ? tile_n(row_n + r0, R) : n) - j0);
        if (nt <= 0 && j0 > 0) continue;
        for (int64_t c0 = 0; c0 < nv; c0 += kNC) {
          const int C = static_cast<int>(std::min<int64_t>(kNC, nv - c0));
          const bool tail = ragged && c0 + C == nv;
          (tail ? kPvTail.fn : kPvFull.fn)[R - 1][C - 1](std::max<int64_t>(nt, 0), Dv - VL * c0, p + r0 * ldp + j0, ldp,
                                     v + j0 * ldv + VL * c0, ldv, j0 == 0 ? alpha + r0 : kOnes,
                                     o + r0 * ldo + VL * c0, ldo);
        }
      }
      if (j0 + kPvPrefillChunk >= n) break;
    }
  }

  static void pvt(int64_t n, int64_t m, int64_t Dv, const float* p, int64_t ldp, const float* v, int64_t ldv,
                  float* o, int64_t ldo) {
    const int64_t nv = llmaccel::ceil_div(Dv, VL);
    const bool ragged = Dv % VL != 0;
    for (int64_t c0 = 0; c0 < nv; c0 += kNC) {
      const int C = static_cast<int>(std::min<int64_t>(kNC, nv - c0));
      const bool tail = ragged && c0 + C == nv;
      for (int64_t r0 = 0; r0 < n; r0 += kMR) {
        const int R = static_cast<int>(std::min<int64_t>(kMR, n - r0));
        (tail ? kPvtTail.fn : kPvtFull.fn)[R - 1][C - 1](m, Dv - VL * c0, p + r0, ldp, v + VL * c0, ldv, o + r0 * ldo + VL * c0, ldo);
      }
    }
  }

  static void exp2(int64_t n, const float* x, float* y) {
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) _mm256_storeu_ps(y + j, exp2v(_mm256_loadu_ps(x + j)));
    if (j < n) {
      const __m256i mk = tail_mask(n - j);
      _mm256_maskstore_ps(y + j, mk, exp2v(_mm256_maskload_ps(x + j, mk)));
    }
  }
};

}  // namespace
}  // namespace LLMACCEL_CPU_CAPABILITY

void attention_run_avx2(const AttentionProblem& p) { run_attention<Avx2>(p); }
void attention_bwd_avx2(const AttentionBwdProblem& p) { run_attention_bwd<Avx2>(p); }
void attention_exp2_avx2(int64_t n, const float* x, float* y) { Avx2::exp2(n, x, y); }
}  // namespace llmaccel
