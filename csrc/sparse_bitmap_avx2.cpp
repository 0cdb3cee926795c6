// sparse_bitmap_linear for AVX2 + FMA CPUs (Haswell and later, Zen 1-3); chosen only when CPUID reports
// them.
//
// The kernel streams only the compressed bytes (bitmap and kept values) and expands in registers, one
// bitmap byte (8 columns of W) at a time, without a branch per byte:
//     fp32:  w = blendv(permutevar8x32(loadu(values + pos), lanes[b]), 0, lanes[b])
//     int8:  w = cvtepi32_ps(cvtepi8_epi32(pshufb(loadl(values + pos), bytes[b])))
//     acc  = fma(w, x[8k .. 8k+7], acc)  per x row;  pos += popcount(b)
// lanes[b] (a 256-entry table) sends lane j the index of its value among the byte's kept ones,
// popcount(b & ((1 << j) - 1)), and has the sign bit set in the lanes whose bit is clear, which the
// blend zeroes; the int8 table puts 0x80 there, which pshufb zeroes.  The expansion runs once per weight
// byte for all x rows of the tile, then one FMA per x row.  At 90 % sparsity most bytes hold 0 or 1 bits,
// so the per-byte cost, not the bytes streamed, bounds the kernel; 64-bit words of the bitmap that are
// all zero (common only far above 90 %) are skipped with one branch.
//
// Reads: the 8-value load reads up to 7 values past the row's last one, which stay inside the buffer
// when row_offsets[row + 1] + 8 <= nnz (every row but the last few); the others copy what is left into
// a zeroed 8-value buffer first.  The partial last byte (K % 8 columns) runs the portable scalar loop.
// Accumulators: 4 per x row for one row, 2 for two, 1 for three or four.  Fixed summation order: lane
// sums, then the tail, then the scale (int8) and the bias.
//
// Values are multiplied by x inside each 8-column window, so an inf or NaN in x at a pruned column gives
// NaN, as the dense reference does (0 * inf); the generic kernel reads x only at kept columns.
#include <immintrin.h>

#include "sparse_bitmap_kernel.h"
#include "simd_avx2.h"

namespace llmaccel {
inline namespace LLMACCEL_CPU_CAPABILITY {
namespace {

// Software prefetch distances: values ahead of the current one (2 KiB of fp32), bitmap bytes ahead.
constexpr int64_t kSbPrefetchValues = 512;
constexpr int64_t kSbPrefetchBitmap = 512;

struct alignas(32) SbLanes {
  int32_t lane[8];
};

// Per bitmap byte value b: fp32 permute lanes (sign bit = zero this lane), int8 pshufb control (0x80 =
// zero), and popcount(b).
struct SbTables {
  SbLanes f32[256];
  uint64_t i8[256];
  uint8_t pop[256];
};

constexpr SbTables sb_make_tables() {
  SbTables t{};
  for (int b = 0; b < 256; ++b) {
    int n = 0;
    uint64_t ctl = 0;
    for (int j = 0; j < 8; ++j) {
      const bool kept = (b >> j) & 1;
      t.f32[b].lane[j] = kept ? n : INT32_MIN;
      ctl |= uint64_t(kept ? n : 0x80) << (8 * j);
      n += kept;
    }
    t.i8[b] = ctl;
    t.pop[b] = static_cast<uint8_t>(n);
  }
  return t;
}

constexpr SbTables kSbTables = sb_make_tables();

// Set bits of n bytes, 32 at a time: per nibble from a 16-entry table (pshufb), summed by psadbw.
int64_t sb_count_bits_avx2(const uint8_t* b, int64_t n) {
  const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2, 1, 2, 2, 3, 1, 2,
                                       2, 3, 2, 3, 3, 4);
  const __m256i low = _mm256_set1_epi8(0x0F);
  __m256i acc = _mm256_setzero_si256();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + i));
    const __m256i c = _mm256_add_epi8(_mm256_shuffle_epi8(lut, _mm256_and_si256(v, low)),
                                      _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(v, 4), low)));
    acc = _mm256_add_epi64(acc, _mm256_sad_epu8(c, _mm256_setzero_si256()));
  }
  alignas(32) int64_t lanes[4];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), acc);
  return lanes[0] + lanes[1] + lanes[2] + lanes[3] + sb_count_bits(b + i, n - i);
}

// The 8 values at v + pos, as 8 floats / 8 int8 bytes.  kSafe: 8 values are inside the buffer; else only
// nnz - pos of them are (copied into a zeroed buffer).
template <bool kSafe>
inline __m256 sb_load8(const float* v, int64_t pos, int64_t nnz) {
  if (kSafe) return _mm256_loadu_ps(v + pos);
  float buf[8] = {};
  if (pos < nnz) std::memcpy(buf, v + pos, sizeof(float) * static_cast<size_t>(std::min<int64_t>(8, nnz - pos)));
  return _mm256_loadu_ps(buf);
}
template <bool kSafe>
inline __m128i sb_load8(const int8_t* v, int64_t pos, int64_t nnz) {
  if (kSafe) return _mm_loadl_epi64(reinterpret_cast<const __m128i*>(v + pos));
  int8_t buf[16] = {};
  if (pos < nnz) std::memcpy(buf, v + pos, static_cast<size_t>(std::min<int64_t>(8, nnz - pos)));
  return _mm_loadu_si128(reinterpret_cast<const __m128i*>(buf));
}

// Bitmap byte b's 8 weights (0 where the bit is clear), its kept values starting at v + pos.
template <bool kSafe>
inline __m256 sb_expand(const float* v, int64_t pos, int64_t nnz, unsigned b) {
  const __m256i lanes = _mm256_load_si256(reinterpret_cast<const __m256i*>(kSbTables.f32[b].lane));
  const __m256 w = _mm256_permutevar8x32_ps(sb_load8<kSafe>(v, pos, nnz), lanes);
  return _mm256_blendv_ps(w, _mm256_setzero_ps(), _mm256_castsi256_ps(lanes));
}
template <bool kSafe>
inline __m256 sb_expand(const int8_t* v, int64_t pos, int64_t nnz, unsigned b) {
  const __m128i ctl = _mm_cvtsi64_si128(static_cast<long long>(kSbTables.i8[b]));
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_shuffle_epi8(sb_load8<kSafe>(v, pos, nnz), ctl)));
}

template <int R, int C>
struct SbAvx2Tile {
  static constexpr int A = R == 1 ? 4 : R == 2 ? 2 : 1;  // accumulators per x row

  template <class T, bool kSafe>
  static void run_t(const SparseBitmapProblem& p, int64_t row, int64_t m0) {
    const T* v = sb_values<T>(p);
    const uint8_t* bm = p.bitmap + row * p.bitmap_sn;
    const float* xr[R];
    for (int r = 0; r < R; ++r) xr[r] = p.x + (m0 + r) * p.x_sm;
    const int64_t kfull = p.K / 8, nnz = p.nnz;  // whole bytes: all 8 columns < K
    int64_t pos = p.row_offsets[row];
    __m256 acc[R][A];
    for (int r = 0; r < R; ++r)
      for (int a = 0; a < A; ++a) acc[r][a] = _mm256_setzero_ps();
    // One byte: expand, then one FMA per x row into accumulator a.
    const auto step = [&](unsigned b, int64_t k, int a) {
      const __m256 w = sb_expand<kSafe>(v, pos, nnz, b);
      pos += kSbTables.pop[b];
      for (int r = 0; r < R; ++r) acc[r][a] = _mm256_fmadd_ps(w, _mm256_loadu_ps(xr[r] + 8 * k), acc[r][a]);
    };
    int64_t k = 0;
    for (; k + 8 <= kfull; k += 8) {
      uint64_t word;
      std::memcpy(&word, bm + k, 8);
      if (word == 0) continue;
      // Both streams run at a data-dependent rate and, from DRAM, the kernel reads far below the machine's
      // bandwidth; ask for the bytes ahead like the N:M kernel does (on the shared dev VM the gain was
      // within its noise: distances not tuned).
      _mm_prefetch(reinterpret_cast<const char*>(v + pos + kSbPrefetchValues), _MM_HINT_T0);
      if constexpr (sizeof(T) == 4)
        _mm_prefetch(reinterpret_cast<const char*>(v + pos + kSbPrefetchValues + 16), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(bm + k + kSbPrefetchBitmap), _MM_HINT_T0);
#pragma GCC unroll 8
      for (int j = 0; j < 8; ++j) step(static_cast<unsigned>(word >> (8 * j)) & 0xFFu, k + j, j % A);
    }
    for (; k < kfull; ++k) step(bm[k], k, 0);
    float tail[R][4] = {};
    sb_scalar_bytes<T, R>(p, row, m0, kfull, pos, tail);
    for (int r = 0; r < R; ++r) {
      __m256 s = acc[r][0];
      for (int a = 1; a < A; ++a) s = _mm256_add_ps(s, acc[r][a]);
      sparse_store(p, row, m0 + r, hsum_ps(s) + sparse_sum4<R>(tail, r));
    }
  }

  static void run(const SparseBitmapProblem& p, int64_t row, int64_t m0) {
    sb_on_values_bounded<SbAvx2Tile, 8>(p, row, m0);
  }
};

// The column-index form: per 8 kept values, their 8 uint16 columns (clamped to K - 1), x at those columns
// gathered per x row, one FMA.  Work per kept value, not per bitmap byte: at 10 % density a bitmap byte holds
// 0.8 kept values on average, and the byte kernel above spends ~3.5 cycles on each byte.  The gather is 8
// scalar loads and inserts, not vgatherdps: on Zen 3 that measured 5-10 % faster in a bare loop (4096 x 4096
// at 90 %, 8 rotating layers, 2 threads), and it needs no vector of indices.  Accumulators: 2 per x row for
// one or two rows, 1 for more.
template <int R, int C>
struct SiAvx2Tile {
  static constexpr int A = R <= 2 ? 2 : 1;

  template <class T>
  static void run_t(const SparseBitmapProblem& p, int64_t row, int64_t m0) {
    const T* v = sb_values<T>(p);
    const uint16_t* cols = p.cols;
    const float* xr[R];
    for (int r = 0; r < R; ++r) xr[r] = p.x + (m0 + r) * p.x_sm;
    const uint32_t kmax = static_cast<uint32_t>(p.K - 1);
    const int64_t t0 = p.row_offsets[row], t1 = p.row_offsets[row + 1];
    __m256 acc[R][A];
    for (int r = 0; r < R; ++r)
      for (int a = 0; a < A; ++a) acc[r][a] = _mm256_setzero_ps();
    int64_t t = t0;
    int a = 0;
    for (; t + 8 <= t1; t += 8) {
      uint32_t c[8];
      for (int j = 0; j < 8; ++j) c[j] = std::min<uint32_t>(cols[t + j], kmax);
      __m256 w;
      if constexpr (sizeof(T) == 4)
        w = _mm256_loadu_ps(reinterpret_cast<const float*>(v + t));
      else
        w = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(v + t))));
      for (int r = 0; r < R; ++r) {
        const float* x = xr[r];
        const __m128 lo = _mm_set_ps(x[c[3]], x[c[2]], x[c[1]], x[c[0]]);
        const __m128 hi = _mm_set_ps(x[c[7]], x[c[6]], x[c[5]], x[c[4]]);
        acc[r][a] = _mm256_fmadd_ps(_mm256_set_m128(hi, lo), w, acc[r][a]);
      }
      a = (a + 1) % A;
    }
    float tail[R][4] = {};
    si_scalar<T, R>(p, m0, t, t1, tail);
    for (int r = 0; r < R; ++r) {
      __m256 s = acc[r][0];
      for (int b = 1; b < A; ++b) s = _mm256_add_ps(s, acc[r][b]);
      sparse_store(p, row, m0 + r, hsum_ps(s) + sparse_sum4<R>(tail, r));
    }
  }
  static void run(const SparseBitmapProblem& p, int64_t row, int64_t m0) { sb_on_values<SiAvx2Tile>(p, row, m0); }
};

}  // namespace
}  // namespace LLMACCEL_CPU_CAPABILITY

int64_t sparse_bitmap_avx2(const SparseBitmapProblem& p) {
  return sb_entry<SbAvx2Tile, SiAvx2Tile, &sb_count_bits_avx2>(p);
}
}  // namespace llmaccel
