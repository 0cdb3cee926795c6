// Weight-only int8_linear for AVX2 + FMA CPUs (Haswell and later, Zen 1-3);
// chosen only when CPUID reports both.
//
// M >= 3: the register tile of int8_linear_wo_kernel.h (wo_tile_v) over the
// same traits, with 256-bit registers and FMA.
// M <= 2 (decode): the streaming GEMV of int8_linear_wo_gemv.h over 8-lane
// traits: per 8 weight bytes one vpmovsxbd, one vcvtdq2ps and one FMA per row.
#include <immintrin.h>

#include "int8_linear_wo_gemv.h"
#include "int8_linear_wo_kernel.h"
#include "vec_f32.h"

namespace llmaccel {
inline namespace LLMACCEL_CPU_CAPABILITY {  // see common.h
namespace {

// The GEMV's and tile's traits: VecF32x8 plus this unit's tuning and int8 load.
struct Avx2WoF32 : VecF32x8 {
  // 1 KiB: 2 and 4 KiB were no better on the AVX2 EPYC (Zen 3).
  // One row at a time: the lockstep walk (int8_linear_wo_gemv.h) is measured on AVX-512 only.
  // The M >= 3 register tile (int8_linear_wo_kernel.h, wo_tile_v): 4 x 3 tile: 12 accumulators + 3 weight vectors + 1 x vector = 16 ymm registers.
  // Measured capped to AVX2 on the 2-core SPR VM at M = 32, against fp32 MKL in the same run: 4 x 3 0.73-0.84x
  // MKL, 2 x 5 0.56-0.68x.
  static constexpr int kMR = 4, kNR = 3;
  static constexpr int kGroupRows = 1;
  static constexpr int64_t kPrefetchBytes = 1024;
  static __m256 load_i8(const int8_t* p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
  }
};

}  // namespace
}  // namespace LLMACCEL_CPU_CAPABILITY

void int8_linear_wo_avx2(const Int8LinearWOProblem& p) {
  if (p.M <= 2)
    wo_gemv<Avx2WoF32>(p);
  else
    run_int8_linear_wo_v<Avx2WoF32>(p);
}
}  // namespace llmaccel
