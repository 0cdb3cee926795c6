// int8_mm for CPUs with AVX-512 VNNI (Cascade Lake and later, Zen 4 and later).
// Built with -mavx512f -mavx512bw -mavx512vl -mavx512vnni; only called when
// CPUID reports those features.
//
// Inner step (64 k values): R loads of packed A (u8 = a + 128, the R rows'
// 64-byte chunks adjacent in memory), C loads of
// B columns, R*C vpdpbusd, each adding 16 lanes of 4-byte dot products into
// an int32 accumulator.  4 x 6 tiles use 24 accumulators + 6 B + 1 A = 31 of
// the 32 zmm registers.  The K tail is one masked B load per column (bytes
// past K read as zero, so A's padding never contributes).
#include <immintrin.h>

#include "int8_mm_driver.h"

namespace llmaccel {
inline namespace LLMACCEL_CPU_CAPABILITY {  // see common.h
namespace {

// Sums each of four vectors across its 16 lanes: returns {sum v0, sum v1, sum v2, sum v3}.
// A transposing tree (unpack + add) costs ~13 instructions for four sums
// instead of ~36 for four independent horizontal reductions.
inline __m128i reduce4(__m512i v0, __m512i v1, __m512i v2, __m512i v3) {
  // Per 128-bit lane: t01 = {v0[0]+v0[2], v1[0]+v1[2], v0[1]+v0[3], v1[1]+v1[3]}.
  __m512i t01 = _mm512_add_epi32(_mm512_unpacklo_epi32(v0, v1), _mm512_unpackhi_epi32(v0, v1));
  __m512i t23 = _mm512_add_epi32(_mm512_unpacklo_epi32(v2, v3), _mm512_unpackhi_epi32(v2, v3));
  // Per 128-bit lane: {partial v0, partial v1, partial v2, partial v3}.
  __m512i u = _mm512_add_epi32(_mm512_unpacklo_epi64(t01, t23), _mm512_unpackhi_epi64(t01, t23));
  __m256i h = _mm256_add_epi32(_mm512_castsi512_si256(u), _mm512_extracti64x4_epi64(u, 1));
  return _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
}

// acc += dot4(a as u8, b as s8) per 32-bit lane.  Written as inline asm with
// the accumulator tied in place ("+v"): with the intrinsic, GCC 12 copies
// every accumulator through a scratch register (and spills half of them)
// around each vpdpbusd, which halved the kernel's throughput.
inline __attribute__((always_inline)) void dpbusd(__m512i& acc, __m512i a, __m512i b) {
  asm("vpdpbusd %[b], %[a], %[acc]" : [acc] "+v"(acc) : [a] "v"(a), [b] "v"(b));
}

struct Avx512Vnni {
  static constexpr int MR = 4;
  static constexpr int NR = 6;
  static constexpr int64_t KALIGN = 64;
  static constexpr bool kOnesRow = true;

  // One k-step of 64 bytes; `mask` selects the valid bytes of B (all ones
  // except in the K tail).  Every loop has a compile-time trip count and is
  // fully unrolled so the accumulators live in registers.
  // Prefetch distance along a plain B column when streaming it from memory.
  // M=1 decode over 8 rotating 4096^2 weights vs torch._int_mm, 4 runs each:
  // 512 B -> 0.96-1.02x, 1024 B -> 0.91-0.97x, 2048 B -> 0.92-0.93x (prefill
  // and M=64 unchanged: compute-bound).
  static constexpr int64_t kPrefetchBytes = 512;

  // Packed panels: the hardware prefetcher follows the single sequential
  // stream; one L2 prefetch per line 1.5 KB ahead keeps enough misses in
  // flight.  Measured at M=1 on 8 x 16 MB packed weights (huge pages),
  // against a plain read of the same bytes: 0.90-0.93 of its rate on 2
  // threads (0.84-0.88 on one) with this, 0.85-0.87 (0.67) with the column
  // scheme, 0.72-0.83 with no software prefetch.
  static constexpr int64_t kPanelPrefetchBytes = 1536;

  template <int R, int C, bool kMasked, int kStream>
  static inline __attribute__((always_inline)) void step(__m512i* acc, const uint8_t* a, const BCols& B,
                                                         int64_t k, __mmask64 mask) {
    const int8_t* b = B.b + k * B.ks;
    __m512i bv[C];
    if constexpr (kStream == kStreamPanels) {
#pragma GCC unroll 8
      for (int c = 0; c < C; ++c)  // the C columns' 64-byte chunks are C adjacent lines
        _mm_prefetch(reinterpret_cast<const char*>(b + c * B.cs + kPanelPrefetchBytes), _MM_HINT_T1);
    } else if constexpr (kStream == kStreamColumns) {
#pragma GCC unroll 8
      for (int c = 0; c < C; ++c) {
        // Near: this column, a little ahead, into L1.  Far: the same bytes
        // of the next group's column, into L2, so the next tile starts on
        // warm lines (a column of an nn.Linear weight is a one-page stream,
        // too short for the hardware prefetcher to ramp up on).
        _mm_prefetch(reinterpret_cast<const char*>(b + c * B.cs + kPrefetchBytes * B.ks), _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(b + c * B.cs + B.next), _MM_HINT_T1);
      }
    }
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c)
      bv[c] = kMasked ? _mm512_maskz_loadu_epi8(mask, b + c * B.cs) : _mm512_loadu_si512(b + c * B.cs);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512i av = _mm512_load_si512(a + k * MR + r * 64);
#pragma GCC unroll 8
      for (int c = 0; c < C; ++c) dpbusd(acc[r * C + c], av, bv[c]);
    }
  }

  template <int R, int C, int kStream>
  static void tile(const uint8_t* a, const BCols& b, int64_t K, int32_t* out) {
    __m512i acc[R * C];
#pragma GCC unroll 32
    for (int i = 0; i < R * C; ++i) acc[i] = _mm512_setzero_si512();
    const int64_t kfull = K & ~int64_t(63);
    for (int64_t k = 0; k < kfull; k += 64) step<R, C, false, kStream>(acc, a, b, k, 0);
    if (kfull < K) step<R, C, true, kReuse>(acc, a, b, kfull, _cvtu64_mask64(~0ull >> (64 - (K - kfull))));
    constexpr int kQuads = R * C / 4;
#pragma GCC unroll 8
    for (int q = 0; q < kQuads; ++q)
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 4 * q),
                       reduce4(acc[4 * q], acc[4 * q + 1], acc[4 * q + 2], acc[4 * q + 3]));
#pragma GCC unroll 4
    for (int i = 4 * kQuads; i < R * C; ++i) out[i] = _mm512_reduce_add_epi32(acc[i]);
  }
};

}  // namespace
}  // namespace LLMACCEL_CPU_CAPABILITY

void int8_mm_avx512vnni(const Int8MMProblem& p) { run_int8_mm<Avx512Vnni>(p); }
Int8MMLayout int8_mm_layout_avx512vnni() { return {Avx512Vnni::NR, Avx512Vnni::KALIGN}; }
}  // namespace llmaccel
