// Weight-only int8_linear for AVX-512 VNNI CPUs.
//
// M >= 3: the register tile of int8_linear_wo_kernel.h (wo_tile_v) over 16-lane
// fp32 traits (fp32 FMA on the converted weight).
// M <= 2 (decode): the integer GEMV of int8_linear_wo_gemv_vnni.h (x as a
// 24-bit integer, vpdpbusd on the weight as stored); where x cannot be carried
// so (inf, NaN, tiny rows, K > 65536) the fp32 GEMV of int8_linear_wo_gemv.h:
// per 16 weight bytes one vpmovsxbd, one vcvtdq2ps and one FMA per row.
#include <immintrin.h>

#include "cpu_features.h"
#include "int8_linear_wo_gemv.h"
#include "int8_linear_wo_gemv_vnni.h"
#include "int8_linear_wo_kernel.h"
#include "reduce_avx512.h"
#include "vec_f32.h"

namespace llmaccel {
inline namespace LLMACCEL_CPU_CAPABILITY {  // see common.h
namespace {

// The GEMV's and tile's traits: VecF32x16 plus this unit's tuning and int8 load.
struct Avx512WoF32 : VecF32x16 {
  // The GEMV walks 4 weight rows in lockstep (int8_linear_wo_gemv.h, wo_gemv_group).  Same-process A/B,
  // 2-core Sapphire Rapids class VM, 8 layers beyond the L3, M = 1: 4 adjacent rows, prefetching the next
  // group's, against the single-row walk with two row streams per thread and a 4 KiB prefetch (2 threads):
  // 8192 x 4096 1.24x (18.5 vs 14.9 GB/s), 2048 x 5632 1.22x, 5632 x 2048 0.97x; M = 2, 4096 x 4096 1.36x;
  // 8 rows no better than 4.  Then 4 rows a segment apart against 4 adjacent (one thread): 5632 x 2048
  // 1.21x, 2048 x 2048 1.11x, 2048 x 5632 1.07x, 4096 x 4096 1.03x.
  // The M >= 3 register tile (int8_linear_wo_kernel.h, wo_tile_v): 4 rows of x x 6 weight rows, 24
  // accumulators + 6 weight vectors + 1 x vector of 32 zmm.  x comes from L2 (every row tile of a group
  // re-reads it), so each x vector should meet as many weight rows as fit: at M = 32 (2-core SPR VM, same
  // runs as fp32 nn.Linear) 8 x 3 ran 0.73-0.88x MKL, 4 x 6 0.85-1.18x, 5 x 5 0.87-1.10x.
  static constexpr int kMR = 4, kNR = 6;
  static constexpr int kGroupRows = 4;
  static constexpr int64_t kPrefetchBytes = 4096;
  static __m512 load_i8(const int8_t* p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
  }
};

// The decode GEMV's traits on u8 x s8 dot products (int8_linear_wo_gemv_vnni.h): 64 bytes per zmm, vpdpbusd.
struct Avx512WoVnni {
  using I = __m512i;
  static constexpr int64_t kBytes = 64;
  static constexpr int kGroupRows = 4;  // as the fp32 GEMV's (Avx512WoF32)
  static constexpr int64_t kPrefetchBytes = 4096;
  static I zero() { return _mm512_setzero_si512(); }
  static I ones() { return _mm512_set1_epi8(1); }
  static I load(const void* p) { return _mm512_loadu_si512(p); }
  static I load_part(const int8_t* p, int n) { return _mm512_maskz_loadu_epi8(_cvtu64_mask64(~0ull >> (64 - n)), p); }
  // The intrinsic, not int8_mm_avx512vnni.cpp's inline asm: here GCC keeps the accumulators in registers with
  // the intrinsic and spills them with the asm.
  static void dp(I& acc, I u, I s) { acc = _mm512_dpbusd_epi32(acc, u, s); }
  static void sum4(I a, I b, I c, I d, int32_t* out) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out), reduce4(a, b, c, d));
  }
};

}  // namespace
}  // namespace LLMACCEL_CPU_CAPABILITY

void int8_linear_wo_avx512vnni(const Int8LinearWOProblem& p) {
  if (p.M <= 2) {
    // No software prefetch on AMD.  Zen 4 VM, weights on huge pages (as Int8Linear keeps them), same process,
    // 4 rows a segment apart, 8-32 layers beyond the L3: without it 1.11x, 1.07x, 0.97x and 1.13x the
    // prefetching walk on 2 threads (16 x 5632 x 2048, 8 x 4096 x 4096, 16 x 2048 x 5632, 32 x 2048 x 2048),
    // 1.21x, 1.06x, 0.95x, 1.01x on one; the Sapphire Rapids class Xeon's tuning (above) keeps it.
    Int8LinearWOProblem q = p;
    q.prefetch = !cpu_vendor_is_amd();
    if (!wo_gemv_vnni<Avx512WoVnni>(q)) wo_gemv<Avx512WoF32>(q);  // the fp32 GEMV where x is not finite
  }
  else
    run_int8_linear_wo_v<Avx512WoF32>(p);
}
}  // namespace llmaccel
