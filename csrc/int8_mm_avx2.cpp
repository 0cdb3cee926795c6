// int8_mm for CPUs with AVX2 (Haswell and later).  Built with -mavx2 -mfma;
// only called when CPUID reports AVX2.
//
// AVX2 has no signed x signed byte dot product that cannot saturate
// (vpmaddubsw saturates at int16), so each 16-byte slice is sign-extended to
// int16 and multiplied with vpmaddwd, whose pairwise int32 sums are exact.
// A 3 x 3 tile keeps 9 accumulators + 3 A + 3 B = 15 of the 16 ymm registers.
#include <immintrin.h>

#include "int8_mm_driver.h"

namespace llmaccel {
inline namespace LLMACCEL_CPU_CAPABILITY {  // see common.h
namespace {

inline int32_t hsum256(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
  return _mm_cvtsi128_si32(s);
}

struct Avx2 {
  static constexpr int MR = 3;
  static constexpr int NR = 3;
  static constexpr int64_t KALIGN = 16;
  static constexpr bool kOnesRow = false;

  template <int R, int C, int kStream>  // kStream: unused, the hardware prefetcher suffices here
  static void tile(const uint8_t* a8, const BCols& B, int64_t K, int32_t* out) {
    const int8_t* a = reinterpret_cast<const int8_t*>(a8);
    __m256i acc[R * C];
    for (int i = 0; i < R * C; ++i) acc[i] = _mm256_setzero_si256();
    const int64_t kfull = K & ~int64_t(15);
    for (int64_t k = 0; k < kfull; k += 16) {
      __m256i bv[C];
      for (int c = 0; c < C; ++c)
        bv[c] = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(B.b + c * B.cs + k * B.ks)));
      for (int r = 0; r < R; ++r) {
        const __m256i av = _mm256_cvtepi8_epi16(_mm_load_si128(reinterpret_cast<const __m128i*>(a + k * MR + r * 16)));
        for (int c = 0; c < C; ++c) acc[r * C + c] = _mm256_add_epi32(acc[r * C + c], _mm256_madd_epi16(av, bv[c]));
      }
    }
    for (int r = 0; r < R; ++r) {
      for (int c = 0; c < C; ++c) {
        int32_t s = hsum256(acc[r * C + c]);
        const int8_t* at = a + kfull * MR + r * 16 - kfull;  // tail chunk of row r
        const int8_t* bt = B.b + c * B.cs + kfull * B.ks - kfull;  // tail chunk of column c
        for (int64_t k = kfull; k < K; ++k) s += int32_t(at[k]) * int32_t(bt[k]);
        out[r * C + c] = s;
      }
    }
  }
};

}  // namespace
}  // namespace LLMACCEL_CPU_CAPABILITY

void int8_mm_avx2(const Int8MMProblem& p) { run_int8_mm<Avx2>(p); }
Int8MMLayout int8_mm_layout_avx2() { return {Avx2::NR, Avx2::KALIGN}; }
}  // namespace llmaccel
