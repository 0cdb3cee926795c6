// The 256-bit int8_mm tiles and loops shared by the avx2 and avxvnni units,
// compiled with each unit's flags inside its capability namespace
// (common.h).  Both units multiply signed bytes with the sign trick
//     a * b = |b| * (sign(b) * a)                              (per byte)
// (u = vpabsb(b) is a valid unsigned byte, s = vpsignb(a, b) is exact for a
// in [-127, 127]); they differ in the instruction sequence that turns 32
// such u8 x s8 products into 8 int32 sums of four.  A unit passes that as its
// `Madd` policy:
//     static void sign(__m256i& acc, __m256i a, __m256i u, __m256i b, __m256i ones)
//       acc[i] += sum_{t<4} a[4i+t] * b[4i+t]   (u = |b|, a without -128;
//                                                ones = 16-bit ones, if needed)
// AVX2: vpsignb, vpmaddubsw, vpmaddwd against ones, vpaddd (int8_mm_avx2.cpp).
// AVX-VNNI: vpsignb, vpdpbusd (int8_mm_avxvnni.cpp).
#pragma once

#include <immintrin.h>

#include "int8_mm_driver.h"
#include "int8_mm_outer.h"
#include "vec_f32.h"

namespace llmaccel {
inline namespace LLMACCEL_CPU_CAPABILITY {  // see common.h
namespace {

inline int32_t hsum256(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
  return _mm_cvtsi128_si32(s);
}

// Sums of four vectors across their 8 lanes: {sum v0, sum v1, sum v2, sum v3}.
inline __m128i hsum4(__m256i v0, __m256i v1, __m256i v2, __m256i v3) {
  const __m256i s01 = _mm256_hadd_epi32(v0, v1);  // per 128-bit half: {v0 pairs, v1 pairs}
  const __m256i s23 = _mm256_hadd_epi32(v2, v3);
  const __m256i s = _mm256_hadd_epi32(s01, s23);  // per half: {v0, v1, v2, v3} partials
  return _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
}

// Reduces the R*C lane accumulators into out[R*C].
template <int N>
inline __attribute__((always_inline)) void reduce_all(const __m256i* acc, int32_t* out) {
  constexpr int kQuads = N / 4;
#pragma GCC unroll 4
  for (int q = 0; q < kQuads; ++q)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 4 * q),
                     hsum4(acc[4 * q], acc[4 * q + 1], acc[4 * q + 2], acc[4 * q + 3]));
#pragma GCC unroll 4
  for (int i = 4 * kQuads; i < N; ++i) out[i] = hsum256(acc[i]);
}

// One register tile and packed-B layout for both tiles: 4 rows x 2 columns.
// The sign tile holds 8 accumulators + 2 B + 2 |B| + A + scratch + ones =
// 15 of the 16 ymm registers, so each step loads 2 B and 4 A vectors for 8
// products.  (3 x 3 with B re-read from L1 as the sign source, and 2 x 4,
// ran within noise of it: 0.62-0.69 of the bare instruction loop's rate,
// one thread, 512 x 4096 x 384 and 64 x 4096 x 1536.)
constexpr int kMR = 4, kNR = 2;
constexpr int64_t kKAlign = 32;

template <class Madd>
struct YmmSign {
  static constexpr int MR = kMR;
  static constexpr int NR = kNR;
  static constexpr int64_t KALIGN = kKAlign;
  static constexpr bool kOnesRow = false;

  // Packed panels (run_int8_mm instantiates a tile for them; AVX2 packed
  // weights now go to the outer-product tile, so only plain columns reach this tile):
  // two L2 prefetches per 32-k step, 1 KiB ahead.
  static constexpr int64_t kPanelPrefetchBytes = 1024;

  template <int R, int C, int kStream>
  static inline __attribute__((always_inline)) void step(__m256i* acc, const int8_t* a, const BCols& B,
                                                         int64_t k, __m256i ones) {
    const int8_t* b = B.b + k * B.ks;
    if constexpr (kStream == kStreamPanels) {
      _mm_prefetch(reinterpret_cast<const char*>(b + kPanelPrefetchBytes), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(b + kPanelPrefetchBytes + 64), _MM_HINT_T0);
    } else if constexpr (kStream == kStreamColumns) {
#pragma GCC unroll 4
      for (int c = 0; c < C; ++c) _mm_prefetch(reinterpret_cast<const char*>(b + c * B.cs + 512), _MM_HINT_T0);
    }
    __m256i bv[C], ub[C];
#pragma GCC unroll 4
    for (int c = 0; c < C; ++c) {
      bv[c] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + c * B.cs));
      ub[c] = _mm256_abs_epi8(bv[c]);
    }
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      const __m256i av = _mm256_load_si256(reinterpret_cast<const __m256i*>(a + k * MR + r * 32));
#pragma GCC unroll 4
      for (int c = 0; c < C; ++c) Madd::sign(acc[r * C + c], av, ub[c], bv[c], ones);
    }
  }

  // The fused epilogue of a full 4 x 2 tile in one ymm register: out[8] is
  // {r0c0, r0c1, r1c0, r1c1, ...}, so lane i needs x_scale[i / 2] and
  // w_scale / bias[i % 2]; y = act(fma(float(acc) * xs, ws, bias)), the
  // scalar epilogue's operations (tile_entry), then one 8-byte store per row.
  // perf put ~15% of the K = 384 GEMM in the scalar form.
  static void fused_epilogue(const int32_t* out, const TileOut& o) {
    const __m256 acc = _mm256_cvtepi32_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(out)));
    const __m256 xs = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(_mm_loadu_ps(o.xs)),
                                               _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3));
    const __m256 ws = _mm256_castpd_ps(_mm256_broadcast_sd(reinterpret_cast<const double*>(o.ws)));
    const __m256 bias =
        o.bias ? _mm256_castpd_ps(_mm256_broadcast_sd(reinterpret_cast<const double*>(o.bias))) : _mm256_setzero_ps();
    __m256 y = _mm256_fmadd_ps(_mm256_mul_ps(acc, xs), ws, bias);
    switch (o.act) {  // per tile, not per element
      case llmaccel::kActGelu: y = gelu_v<VecF32x8>(y); break;
      case llmaccel::kActGeluTanh: y = gelu_tanh_v<VecF32x8>(y); break;
      case llmaccel::kActRelu: y = relu_v<VecF32x8>(y); break;
      default: break;
    }
    const __m128 lo = _mm256_castps256_ps128(y), hi = _mm256_extractf128_ps(y, 1);
    _mm_storel_pi(reinterpret_cast<__m64*>(o.y), lo);
    _mm_storeh_pi(reinterpret_cast<__m64*>(o.y + o.y_sm), lo);
    _mm_storel_pi(reinterpret_cast<__m64*>(o.y + 2 * o.y_sm), hi);
    _mm_storeh_pi(reinterpret_cast<__m64*>(o.y + 3 * o.y_sm), hi);
  }

  template <int R, int C, int kStream>
  static void tile(const uint8_t* a8, const BCols& B, int64_t K, int32_t* out) {
    const int8_t* a = reinterpret_cast<const int8_t*>(a8);
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i acc[R * C];
#pragma GCC unroll 16
    for (int i = 0; i < R * C; ++i) acc[i] = _mm256_setzero_si256();
    // Packed panels are zero padded to a multiple of 32 in k (as is packed
    // A), so their last partial chunk runs as a full step; plain columns may
    // end at K and get a scalar tail.
    const int64_t kvec = B.ks != 1 ? llmaccel::round_up(K, 32) : (K & ~int64_t(31));
    for (int64_t k = 0; k < kvec; k += 32) step<R, C, kStream>(acc, a, B, k, ones);
    reduce_all<R * C>(acc, out);
    if (kvec < K) {
      for (int r = 0; r < R; ++r)
        for (int c = 0; c < C; ++c) {
          const int8_t* at = a + kvec * MR + r * 32 - kvec;
          const int8_t* bt = B.b + c * B.cs;
          int32_t s = 0;
          for (int64_t k = kvec; k < K; ++k) s += int32_t(at[k]) * int32_t(bt[k]);
          out[r * C + c] += s;
        }
    }
  }
};

// Writes an R x 16 outer-product tile (two int32 accumulators per row,
// columns 0-7 and 8-15 of the panel) through o: the exact int32 C, or the
// fused fp32 epilogue y = act(fma(float(acc) * xs, ws, bias)) (+ o.res).
// Inlined into tile() with its row loops unrolled: an out-of-line call,
// or an accumulator indexed by a run-time row, takes the array's address,
// and GCC then keeps every accumulator on the stack through the k loop.
template <int R>
inline __attribute__((always_inline)) void ymm_outer_store(const __m256i* acc, const OuterOut& o) {
  constexpr int NR = 16;
  const bool full = o.cols == NR;
  if (!o.y) {
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      int32_t* crow = o.c + r * o.c_sm;
      if (full && o.c_sn == 1) {
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(crow), acc[2 * r]);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(crow + 8), acc[2 * r + 1]);
      } else {
        alignas(32) int32_t v[NR];
        _mm256_store_si256(reinterpret_cast<__m256i*>(v), acc[2 * r]);
        _mm256_store_si256(reinterpret_cast<__m256i*>(v + 8), acc[2 * r + 1]);
        for (int c = 0; c < o.cols; ++c) crow[c * o.c_sn] = v[c];
      }
    }
    return;
  }
  // Scales and bias of the panel's columns (zero beyond the last real one).
  alignas(32) float wsb[2 * NR] = {};
  __m256 ws0, ws1, b0 = _mm256_setzero_ps(), b1 = _mm256_setzero_ps();
  if (full) {
    ws0 = _mm256_loadu_ps(o.ws);
    ws1 = _mm256_loadu_ps(o.ws + 8);
    if (o.bias) b0 = _mm256_loadu_ps(o.bias), b1 = _mm256_loadu_ps(o.bias + 8);
  } else {
    for (int c = 0; c < o.cols; ++c) {
      wsb[c] = o.ws[c];
      wsb[NR + c] = o.bias ? o.bias[c] : 0.0f;
    }
    ws0 = _mm256_load_ps(wsb), ws1 = _mm256_load_ps(wsb + 8);
    b0 = _mm256_load_ps(wsb + NR), b1 = _mm256_load_ps(wsb + NR + 8);
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    const __m256 xs = _mm256_set1_ps(o.xs[r]);
    __m256 y0 = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(acc[2 * r]), xs), ws0, b0);
    __m256 y1 = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(acc[2 * r + 1]), xs), ws1, b1);
    switch (o.act) {  // per tile, not per element
      case llmaccel::kActGelu: y0 = gelu_v<VecF32x8>(y0), y1 = gelu_v<VecF32x8>(y1); break;
      case llmaccel::kActGeluTanh: y0 = gelu_tanh_v<VecF32x8>(y0), y1 = gelu_tanh_v<VecF32x8>(y1); break;
      case llmaccel::kActRelu: y0 = relu_v<VecF32x8>(y0), y1 = relu_v<VecF32x8>(y1); break;
      default: break;
    }
    float* yrow = o.y + r * o.y_sm;
    if (full) {
      if (o.res) {
        y0 = _mm256_add_ps(y0, _mm256_loadu_ps(o.res + r * o.r_sm));
        y1 = _mm256_add_ps(y1, _mm256_loadu_ps(o.res + r * o.r_sm + 8));
      }
      _mm256_storeu_ps(yrow, y0);
      _mm256_storeu_ps(yrow + 8, y1);
    } else {
      alignas(32) float v[NR];
      _mm256_store_ps(v, y0);
      _mm256_store_ps(v + 8, y1);
      if (o.res)
        for (int c = 0; c < o.cols; ++c) v[c] += o.res[r * o.r_sm + c];
      for (int c = 0; c < o.cols; ++c) yrow[c] = v[c];
    }
  }
}

struct YmmExact {
  static constexpr int MR = kMR;
  static constexpr int NR = kNR;
  static constexpr int64_t KALIGN = kKAlign;
  static constexpr bool kOnesRow = false;

  template <int R, int C, int kStream>  // kStream: unused, the hardware prefetcher suffices here
  static void tile(const uint8_t* a8, const BCols& B, int64_t K, int32_t* out) {
    const int8_t* a = reinterpret_cast<const int8_t*>(a8);
    __m256i acc[R * C];
    for (int i = 0; i < R * C; ++i) acc[i] = _mm256_setzero_si256();
    const int64_t kfull = K & ~int64_t(15);
    for (int64_t k = 0; k < kfull; k += 16) {
      // 16-byte half h of the 32-byte chunk holding k.
      const int64_t chunk = k & ~int64_t(31), h = k & 16;
      __m256i bv[C];
      for (int c = 0; c < C; ++c)
        bv[c] = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(B.b + c * B.cs + chunk * B.ks + h)));
      for (int r = 0; r < R; ++r) {
        const __m256i av =
            _mm256_cvtepi8_epi16(_mm_load_si128(reinterpret_cast<const __m128i*>(a + chunk * MR + r * 32 + h)));
        for (int c = 0; c < C; ++c) acc[r * C + c] = _mm256_add_epi32(acc[r * C + c], _mm256_madd_epi16(av, bv[c]));
      }
    }
    reduce_all<R * C>(acc, out);
    if (kfull < K) {
      const int64_t chunk = kfull & ~int64_t(31);
      for (int r = 0; r < R; ++r)
        for (int c = 0; c < C; ++c) {
          const int8_t* at = a + chunk * MR + r * 32 - chunk;      // chunk of row r, indexed by k
          const int8_t* bt = B.b + c * B.cs + chunk * B.ks - chunk;  // chunk of column c, indexed by k
          int32_t s = 0;
          for (int64_t k = kfull; k < K; ++k) s += int32_t(at[k]) * int32_t(bt[k]);
          out[r * C + c] += s;
        }
    }
  }
};

// True when some A[m][k] is -128 (the one value the sign tile cannot take).
bool a_has_min(const llmaccel::Int8MMProblem& p) {
  for (int64_t m = 0; m < p.M; ++m) {
    const int8_t* row = p.a + m * p.a_sm;
    int found = 0;
    if (p.a_sk == 1) {
      for (int64_t k = 0; k < p.K; ++k) found |= row[k] == -128;  // vectorizes
    } else {
      for (int64_t k = 0; k < p.K; ++k) found |= row[k * p.a_sk] == -128;
    }
    if (found) return true;
  }
  return false;
}

// int8_linear act="dynamic" on a plain (unpacked) weight for M <= MR rows
// (decode; packed weights take the outer-product decode): one parallel region
// and no barrier.  Every thread quantizes the few rows of x itself (same
// arithmetic as the driver's prologue, K bytes per row) into its own packed
// A, then streams its own contiguous range of column groups.  On a shared
// 2-core machine the driver's two barriers (pack, then the column loop) cost
// a scheduler slice whenever the other thread is descheduled: 0.48 of a
// plain read at M=1 with 2 threads where the kernel alone, timed in CPU
// seconds on one thread, matched the read.
template <class Isa>
void linear_decode(const llmaccel::Int8MMProblem& p) {
  using llmaccel::ceil_div;
  using llmaccel::round_up;
  constexpr int MR = Isa::MR, NR = Isa::NR;
  constexpr int64_t KA = Isa::KALIGN;
  static constexpr Int8TileTable<Isa, kStreamColumns> columns;
  const TileFn(*fn)[NR] = columns.fn;
  const int64_t M = p.M, N = p.N, K = p.K, Kp = round_up(K, KA), ngroups = ceil_div(N, NR);
  const int R = static_cast<int>(M);
  // Per-thread packed A, allocated before the region (an exception must not
  // leave an OpenMP region: bad_alloc reaches Python as MemoryError).
  const int64_t slice = round_up(MR * Kp, 64);
  auto apack_all = alloc_bytes(slice * p.nthreads);
  const int64_t smooth_row = round_up(K, 16);  // per-thread smoothed x row (pack_a_row)
  auto smooth_all = alloc_bytes(p.smooth_inv ? smooth_row * 4 * p.nthreads : 0);
#pragma omp parallel num_threads(p.nthreads)
  {
    uint8_t* apack = apack_all.get() + slice * omp_get_thread_num();
    float xs[MR];
    float* smoothed = reinterpret_cast<float*>(smooth_all.get()) + smooth_row * omp_get_thread_num();
    for (int64_t r = 0; r < M; ++r) pack_a_row<Isa>(p, apack + r * KA, Kp, r, false, &xs[r], smoothed);
    if (omp_get_thread_num() == 0)
      for (int64_t r = 0; r < M; ++r) p.x_scale[r] = xs[r];
    const int t = omp_get_thread_num(), T = omp_get_num_threads();
    const int64_t g0 = ngroups * t / T, g1 = ngroups * (t + 1) / T;
    for (int64_t g = g0; g < g1; ++g) {
      const int64_t n0 = g * NR;
      const int Cn = static_cast<int>(std::min<int64_t>(NR, N - n0));
      const BCols b{p.b + n0 * p.ldb, p.ldb, 1, NR * p.ldb};
      TileOut o{nullptr, 0, 1, nullptr, false, false, p.y + n0, p.y_sm, xs, p.w_scale + n0,
                p.bias ? p.bias + n0 : nullptr, p.activation, p.residual ? p.residual + n0 : nullptr, p.r_sm};
      fn[R - 1][Cn - 1](apack, b, K, o);
    }
  }
}

// Plain-weight int8_mm calls with fewer rows than this run the dot-product
// tile on the columns in place: below it, packing B for the outer-product
// tile (N * K bytes, 4-byte pieces) costs more than the tile saves.
constexpr int64_t kOuterMinRowsPlain = 64;

// The routing both 256-bit units share: packed weights and large M to the
// outer-product tile `Outer`, small M on plain columns to the sign-trick dot
// tile over `Madd`.  The sign trick cannot take a -128 in A: such int8_mm
// calls go to the outer tile where it stores A as a + 128 (Outer::kAFlip),
// else to the exact 16-bit tile.
template <class Madd, class Outer>
void ymm_int8_mm(const llmaccel::Int8MMProblem& p) {
  if (p.b_packed) {  // int8_linear with a weight from int8_mm_pack_b: the outer-product layout
    run_int8_mm_outer<Outer>(p);
    return;
  }
  if (p.x) {  // int8_linear on a plain weight; A is quantized to [-127, 127] by construction
    if (p.M <= kMR)
      linear_decode<YmmSign<Madd>>(p);
    else
      run_int8_mm_outer<Outer>(p);
    return;
  }
  const bool has_min = a_has_min(p);
  if (has_min && Outer::kAFlip == 0)
    run_int8_mm<YmmExact>(p);
  else if (!has_min && p.M < kOuterMinRowsPlain)
    run_int8_mm<YmmSign<Madd>>(p);
  else
    run_int8_mm_outer<Outer>(p);
}

}  // namespace
}  // namespace LLMACCEL_CPU_CAPABILITY
}  // namespace llmaccel
