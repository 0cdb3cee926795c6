// sparse_bitmap_linear for AVX-512 CPUs (Skylake-SP and later, Zen 4); chosen only when CPUID reports every
// feature of the avx512 level.
//
// Bitmap form: 16 columns of W per step, the bitmap's 16 bits used directly as an AVX-512 mask, so the
// expansion is one instruction instead of the AVX2 unit's table load, permute and blend per 8 columns:
//     k    = bitmap bits of columns 16c .. 16c+15             (kmovw from memory)
//     w    = vexpandps{k}{z}(values + pos)                     (reads only popcount(k) values)
//     acc  = fma(w, x[16c .. 16c+15], acc)  per x row;   pos += popcount(k)
// int8 values: the next 16 bytes (a masked load of popcount(k) of them, so no read past the row's values),
// sign-extended to 16 int32, vpexpandd{k}{z}, converted to fp32.  The popcounts are not on the critical path:
// per 512 columns (64 bitmap bytes) one vector pass computes the 32 chunk counts (a nibble table through
// vpshufb, pairs of bytes summed by vpmaddubsw) into a small array, and `pos` only adds them.  (popcnt is not
// part of any ISA level's flags.)  Columns past the last whole 16-column chunk run the portable scalar loop.
// Fixed summation order: the chains in order, the horizontal sum, the tail, then scale and bias.
//
// Column-index form (by_index): 16 kept values a step, their 16 uint16 columns zero-extended and clamped to
// K - 1, x gathered by vgatherdps, one FMA per x row; the last < 16 values through masked loads and a masked
// gather (no scalar tail).  Work per kept value: at 10 % density 1/10 of the bitmap form's steps.
//
// As in the AVX2 unit, x is multiplied by the zeros of pruned columns inside each chunk (bitmap form), so an
// inf or NaN in x there gives NaN, as the dense reference does.
#include <immintrin.h>

#include "sparse_bitmap_kernel.h"

namespace llmaccel {
inline namespace LLMACCEL_CPU_CAPABILITY {
namespace {

// Set bits per 16-bit chunk of 64 bitmap bytes (32 chunks), as int16.
inline __m512i sb_chunk_counts(__m512i bytes) {
  const __m512i lut = _mm512_broadcast_i32x4(_mm_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4));
  const __m512i low = _mm512_set1_epi8(0x0F);
  const __m512i c = _mm512_add_epi8(_mm512_shuffle_epi8(lut, _mm512_and_si512(bytes, low)),
                                    _mm512_shuffle_epi8(lut, _mm512_and_si512(_mm512_srli_epi16(bytes, 4), low)));
  return _mm512_maddubs_epi16(c, _mm512_set1_epi8(1));
}

// Set bits of n bytes (the row check of sb_run), 64 at a time; the last < 64 by a masked load.
int64_t sb_count_bits_avx512(const uint8_t* b, int64_t n) {
  __m512i acc = _mm512_setzero_si512();
  for (int64_t i = 0; i < n; i += 64) {
    const int64_t left = std::min<int64_t>(64, n - i);
    const __mmask64 m = left == 64 ? ~__mmask64(0) : (__mmask64(1) << left) - 1;
    acc = _mm512_add_epi32(acc, _mm512_madd_epi16(sb_chunk_counts(_mm512_maskz_loadu_epi8(m, b + i)),
                                                  _mm512_set1_epi16(1)));
  }
  return _mm512_reduce_add_epi32(acc);
}

// The 16 weights of one chunk (0 where the bit is clear), the chunk's kept values starting at v + pos.
// kSafe: 16 values (bytes) from pos lie inside the buffer, so a plain load fetches them; else a masked load
// of the chunk's cnt values (no read past the buffer).  (A masked load per chunk, or vexpandps from memory,
// measured ~2x slower in cache on the Sapphire Rapids class Xeon: the mask arithmetic and the load's mask
// sit in front of every expansion.)
template <bool kSafe>
inline __m512 sb_expand16(const float* v, int64_t pos, __mmask16 k, int cnt) {
  const __m512 vals = kSafe ? _mm512_loadu_ps(v + pos)
                            : _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << cnt) - 1), v + pos);
  return _mm512_maskz_expand_ps(k, vals);
}
template <bool kSafe>
inline __m512 sb_expand16(const int8_t* v, int64_t pos, __mmask16 k, int cnt) {
  const __m128i q = kSafe ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(v + pos))
                          : _mm_maskz_loadu_epi8(static_cast<__mmask16>((1u << cnt) - 1), v + pos);
  return _mm512_cvtepi32_ps(_mm512_maskz_expand_epi32(k, _mm512_cvtepi8_epi32(q)));
}

// Software prefetch distances (the AVX2 unit's): values ahead of the current one, bitmap bytes ahead.
constexpr int64_t kSbPrefetchValues = 512;
constexpr int64_t kSbPrefetchBitmap = 512;

template <int R, int C>
struct SbAvx512Tile {
  static constexpr int A = R == 1 ? 4 : 2;  // accumulator chains per x row

  template <class T, bool kSafe>
  static void run_t(const SparseBitmapProblem& p, int64_t row, int64_t m0) {
    const T* v = sb_values<T>(p);
    const uint8_t* bm = p.bitmap + row * p.bitmap_sn;
    const float* xr[R];
    for (int r = 0; r < R; ++r) xr[r] = p.x + (m0 + r) * p.x_sm;
    const int64_t nchunks = p.K / 16;  // whole 16-column chunks: all columns < K
    int64_t pos = p.row_offsets[row];
    __m512 acc[R][A];
    for (int r = 0; r < R; ++r)
      for (int a = 0; a < A; ++a) acc[r][a] = _mm512_setzero_ps();
    alignas(64) int16_t cnt[32];
    for (int64_t c0 = 0; c0 < nchunks; c0 += 32) {
      const int64_t n = std::min<int64_t>(32, nchunks - c0);
      const __mmask64 bytes = n == 32 ? ~__mmask64(0) : (__mmask64(1) << (2 * n)) - 1;
      _mm512_store_si512(cnt, sb_chunk_counts(_mm512_maskz_loadu_epi8(bytes, bm + 2 * c0)));
      // Both streams run at a data-dependent rate: ask for the bytes ahead (as the AVX2 unit does); the
      // values, one line per chunk (a chunk consumes at most 16 values, one line of fp32).
      _mm_prefetch(reinterpret_cast<const char*>(bm + 2 * c0 + kSbPrefetchBitmap), _MM_HINT_T0);
      // One chunk: expand, then one FMA per x row into chain a (a compile-time constant in the unrolled
      // body, so the chains stay in registers).
      const auto step = [&](int64_t i, int a) {
        const int64_t c = c0 + i;
        uint16_t bits;
        std::memcpy(&bits, bm + 2 * c, 2);
        _mm_prefetch(reinterpret_cast<const char*>(v + pos + kSbPrefetchValues), _MM_HINT_T0);
        const __m512 w = sb_expand16<kSafe>(v, pos, static_cast<__mmask16>(bits), cnt[i]);
        pos += cnt[i];
        for (int r = 0; r < R; ++r) acc[r][a] = _mm512_fmadd_ps(w, _mm512_loadu_ps(xr[r] + 16 * c), acc[r][a]);
      };
      int64_t i = 0;
      for (; i + A <= n; i += A) {
#pragma GCC unroll 4
        for (int j = 0; j < A; ++j) step(i + j, j);
      }
      for (; i < n; ++i) step(i, 0);
    }
    float tail[R][4] = {};
    sb_scalar_bytes<T, R>(p, row, m0, 2 * nchunks, pos, tail);
    for (int r = 0; r < R; ++r) {
      __m512 s = acc[r][0];
      for (int a = 1; a < A; ++a) s = _mm512_add_ps(s, acc[r][a]);
      sparse_store(p, row, m0 + r, _mm512_reduce_add_ps(s) + sparse_sum4<R>(tail, r));
    }
  }
  static void run(const SparseBitmapProblem& p, int64_t row, int64_t m0) {
    sb_on_values_bounded<SbAvx512Tile, 16>(p, row, m0);
  }
};

// n (<= 16) values at v, the rest of the vector 0.
inline __m512 si_load16(const float* v, __mmask16 m) { return _mm512_maskz_loadu_ps(m, v); }
inline __m512 si_load16(const int8_t* v, __mmask16 m) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(m, v)));
}

template <int R, int C>
struct SiAvx512Tile {
  static constexpr int A = R == 1 ? 4 : 2;

  template <class T>
  static void run_t(const SparseBitmapProblem& p, int64_t row, int64_t m0) {
    const T* v = sb_values<T>(p);
    const float* xr[R];
    for (int r = 0; r < R; ++r) xr[r] = p.x + (m0 + r) * p.x_sm;
    const __m512i kmax = _mm512_set1_epi32(static_cast<int32_t>(p.K - 1));
    const int64_t t0 = p.row_offsets[row], t1 = p.row_offsets[row + 1];
    __m512 acc[R][A];
    for (int r = 0; r < R; ++r)
      for (int a = 0; a < A; ++a) acc[r][a] = _mm512_setzero_ps();
    // 16 values from t (m: which of them exist) into chain a (a constant in the unrolled body).
    const auto step = [&](int64_t t, __mmask16 m, int a) {
      _mm_prefetch(reinterpret_cast<const char*>(v + t + kSbPrefetchValues), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(p.cols + t + kSbPrefetchValues), _MM_HINT_T0);
      const __m512i cols = _mm512_min_epu32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p.cols + t)), kmax);
      const __m512 w = si_load16(v + t, m);
      for (int r = 0; r < R; ++r) {
        const __m512 xg = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, cols, xr[r], 4);
        acc[r][a] = _mm512_fmadd_ps(xg, w, acc[r][a]);
      }
    };
    int64_t t = t0;
    for (; t + 16 * A <= t1; t += 16 * A) {
#pragma GCC unroll 4
      for (int j = 0; j < A; ++j) step(t + 16 * j, __mmask16(0xFFFF), j);
    }
    for (; t < t1; t += 16) {
      const int64_t left = t1 - t;
      step(t, left >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << left) - 1), 0);
    }
    for (int r = 0; r < R; ++r) {
      __m512 s = acc[r][0];
      for (int b = 1; b < A; ++b) s = _mm512_add_ps(s, acc[r][b]);
      sparse_store(p, row, m0 + r, _mm512_reduce_add_ps(s));
    }
  }
  static void run(const SparseBitmapProblem& p, int64_t row, int64_t m0) { sb_on_values<SiAvx512Tile>(p, row, m0); }
};

}  // namespace
}  // namespace LLMACCEL_CPU_CAPABILITY

int64_t sparse_bitmap_avx512(const SparseBitmapProblem& p) {
  return sb_entry<SbAvx512Tile, SiAvx512Tile, &sb_count_bits_avx512>(p);
}
}  // namespace llmaccel
