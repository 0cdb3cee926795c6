// int8_mm for CPUs with AVX2 (Haswell and later, Zen 1-3).  Built with
// -mavx2 -mfma; only called when CPUID reports AVX2.
//
// Two tiles share the dot-product driver (int8_mm_driver.h):
//
// * Sign trick (fast).  vpmaddubsw multiplies unsigned by signed bytes and
//   adds adjacent pairs into int16 with saturation; vpmaddwd against a vector
//   of ones widens those pairs into int32.  For signed x signed bytes,
//       a * b = |b| * (sign(b) * a)                              (per byte)
//   so with u = vpabsb(b) (unsigned 0..128) and s = vpsignb(a, b):
//       |u1*s1 + u2*s2| <= 2 * 128 * 127 = 32512 < 32767
//   whenever a has no -128 (then |s| <= 127; b may be anything: |-128| = 128
//   is a valid u8).  vpsignb(-128) would wrap, which is the one input the
//   tile cannot take.  int8_linear's activations are quantized to [-127, 127],
//   so its W8A8 product always runs here, whatever the weights hold;
//   int8_mm scans A once (M*K bytes against 2*M*N*K operations) and uses
//   this tile when A has no -128.
//   Per 32 k-values and output: vpsignb + vpmaddubsw + vpmaddwd + vpaddd.
//   Measured on Zen 3 (instruction loops, same run): vpmaddubsw and vpmaddwd
//   share the two integer-multiply pipes (2 per cycle together), vpsignb and
//   vpaddd issue elsewhere; the 4-op block sustains ~0.8 per cycle, i.e.
//   ~25 of the 32 MACs per cycle the multiply pipes allow.
//
// * Exact 16-bit (any int8, including -128).  Each 16-byte slice is
//   sign-extended to int16 and multiplied with vpmaddwd, whose pairwise
//   int32 sums are exact.
#include "int8_mm_ymm.h"

namespace llmaccel {
inline namespace LLMACCEL_CPU_CAPABILITY {  // see common.h
namespace {

// acc += widen(vpmaddubsw(u, vpsignb(a, b))): 32 products a[i] * b[i]
// summed in fours into the 8 int32 lanes (u = |b|).  Inline asm with the
// accumulator tied in place ("+x"): written with intrinsics, GCC 12 keeps
// half of the accumulators on the stack and reloads them every step.
inline __attribute__((always_inline)) void sign_madd(__m256i& acc, __m256i a, __m256i u, __m256i b, __m256i ones) {
  __m256i t;
  asm("vpsignb %[b], %[a], %[t]\n\t"
      "vpmaddubsw %[t], %[u], %[t]\n\t"
      "vpmaddwd %[ones], %[t], %[t]\n\t"
      "vpaddd %[t], %[acc], %[acc]"
      : [acc] "+x"(acc), [t] "=&x"(t)
      : [a] "x"(a), [u] "x"(u), [b] "x"(b), [ones] "x"(ones));
}

struct Avx2Madd {
  static inline __attribute__((always_inline)) void sign(__m256i& acc, __m256i a, __m256i u, __m256i b,
                                                         __m256i ones) {
    sign_madd(acc, a, u, b, ones);
  }
};

// The outer-product tile (int8_mm_outer.h): 4 rows x 16 columns, one int32
// lane per output.  Per quad step: b and u = |b| for the panel's two column
// vectors (shared by all rows), then per row a 4-byte broadcast of A and,
// per column vector, acc += widen(vpmaddubsw(u, vpsignb(a, b))), the sign
// trick with A as the signed side: a * sign(b) * |b| = a * b, exact for a in
// [-127, 127] (any b).  8 accumulators + 2 b + 2 |b| + broadcast + scratch +
// ones = 15 ymm.
// Tried (one thread, Zen 3, int8_linear, same run): 5 rows with b re-read
// from L1 as vpsignb's memory operand (15 ymm) ran 45-57 MAC/ns where this
// runs 58-65; 3 rows, 0.78-0.84x torch.ao where this is 0.83-0.96x.  In bare
// loops, replacing vpsignb by xor/sub with a sign mask of b, or by a blend
// with a negated broadcast (fewer ops on the multiply pipes), was 8-14%
// slower than vpsignb.
struct Avx2Outer {
  static constexpr int MR = 4;
  static constexpr int NR = 16;
  static constexpr uint8_t kAFlip = 0;  // A packed as signed codes (int8_mm_outer.h)

  template <int R, int kStream>
  static void tile(const int8_t* a, const int8_t* b, int64_t nq, const OuterOut& o) {
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i acc[2 * R];
#pragma GCC unroll 16
    for (int i = 0; i < 2 * R; ++i) acc[i] = _mm256_setzero_si256();
    for (int64_t j = 0; j < nq; ++j) {
      const int8_t* bj = b + j * NR * 4;
      // A panel streamed from DRAM (decode) is one sequential run: one line
      // per step, 1 KiB ahead, keeps misses in flight past the hardware
      // prefetcher's ramp.
      if constexpr (kStream == kStreamPanels) _mm_prefetch(reinterpret_cast<const char*>(bj + 1024), _MM_HINT_T0);
      // Unaligned loads: a caller's packed buffer need not be 32-byte aligned.
      const __m256i b0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bj));
      const __m256i b1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bj + 32));
      const __m256i u0 = _mm256_abs_epi8(b0), u1 = _mm256_abs_epi8(b1);
      const int8_t* aj = a + j * MR * 4;
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        int32_t quad;
        std::memcpy(&quad, aj + 4 * r, 4);
        const __m256i av = _mm256_set1_epi32(quad);
        sign_madd(acc[2 * r], av, u0, b0, ones);
        sign_madd(acc[2 * r + 1], av, u1, b1, ones);
      }
    }
    ymm_outer_store<R>(acc, o);
  }
};

}  // namespace
}  // namespace LLMACCEL_CPU_CAPABILITY

void int8_mm_avx2(const Int8MMProblem& p) { ymm_int8_mm<Avx2Madd, Avx2Outer>(p); }
Int8MMLayout int8_mm_layout_avx2() { return {Avx2Outer::NR, 4}; }  // packed weights feed the outer-product tile
}  // namespace llmaccel

