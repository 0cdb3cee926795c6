// Weight-only int8_linear for AVX-512 CPUs (fp32 FMA; VNNI is not used, the
// unit only shares the AVX-512 level).
//
// M >= 3: the register tile of int8_linear_wo_kernel.h (wo_tile_v) over the
// same traits, with 512-bit registers.
// M <= 2 (decode): the streaming GEMV of int8_linear_wo_gemv.h over 16-lane
// traits: per 16 weight bytes one vpmovsxbd, one vcvtdq2ps and one FMA per row.
#include <immintrin.h>

#include "int8_linear_wo_gemv.h"
#include "int8_linear_wo_kernel.h"
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

}  // namespace
}  // namespace LLMACCEL_CPU_CAPABILITY

void int8_linear_wo_avx512vnni(const Int8LinearWOProblem& p) {
  if (p.M <= 2)
    wo_gemv<Avx512WoF32>(p);
  else
    run_int8_linear_wo_v<Avx512WoF32>(p);
}
}  // namespace llmaccel
