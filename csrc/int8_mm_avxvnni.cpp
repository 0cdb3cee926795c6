// int8_mm for CPUs with AVX-VNNI but no AVX-512: Alder Lake and later
// clients, Sierra Forest / Grand Ridge Xeons (E-cores), and any AVX2 server
// that adds the VEX-encoded vpdpbusd.  Built with -mavx2 -mfma -mf16c
// -mavxvnni; only called when CPUID reports AVX-VNNI (CPUID.7.1:EAX bit 4).
//
// vpdpbusd (ymm) multiplies 32 unsigned bytes by 32 signed bytes and adds
// each group of four products to one of 8 int32 lanes, without saturation:
// one instruction for what AVX2 spends vpmaddubsw + vpmaddwd + vpaddd on.
//
// * Outer-product tile (int8_mm_outer.h: packed weights, int8_linear, and
//   plain-weight int8_mm from 64 rows): A is packed as u8 = a + 128 (kAFlip),
//   so every int8 A is exact, -128 included, and
//       sum_k (a_k + 128) b_k = a.b + 128 * colsum(b);
//   the tile subtracts 128 * colsum once at the end (int32 arithmetic wraps
//   modulo 2^32, and the exact result fits in int32 for K <= 131071).  Per
//   quad step and row: one 4-byte broadcast of A and two vpdpbusd against the
//   panel's two column vectors, nothing else; 6 rows x 16 columns = 12
//   accumulators + 2 B + 1 broadcast = 15 of the 16 ymm registers.
// * Dot-product tile for small M on plain columns (int8_mm_ymm.h's YmmSign)
//   with the sign trick: u = |b|, s = vpsignb(a, b), vpdpbusd(acc, u, s).
//   int8_mm with a -128 in A takes the outer-product tile instead.
//
// Every vpdpbusd here is written as "{vex} vpdpbusd": the assembler would
// otherwise choose the EVEX (AVX-512 VL) encoding, which SIGILLs on the CPUs
// this unit is for (tests/test_isa.py disassembles the unit to check).
#include "int8_mm_ymm.h"

namespace llmaccel {
inline namespace LLMACCEL_CPU_CAPABILITY {  // see common.h
namespace {

// acc += dot4(u as u8, s as s8) per 32-bit lane, the accumulator tied in
// place (see int8_mm_avx2.cpp's sign_madd for why inline asm).
inline __attribute__((always_inline)) void dpbusd(__m256i& acc, __m256i u, __m256i s) {
  asm("%{vex%} vpdpbusd %[s], %[u], %[acc]" : [acc] "+x"(acc) : [u] "x"(u), [s] "x"(s));
}

// The sign trick on vpdpbusd: 32 products a[i] * b[i], u = |b|, a without -128.
struct VnniMadd {
  static inline __attribute__((always_inline)) void sign(__m256i& acc, __m256i a, __m256i u, __m256i b,
                                                         __m256i /*ones*/) {
    dpbusd(acc, u, _mm256_sign_epi8(a, b));
  }
};

struct VnniOuter {
  static constexpr int MR = 6;
  static constexpr int NR = 16;
  static constexpr uint8_t kAFlip = 0x80;  // A packed as u8 = a + 128

  template <int R, int kStream>
  static void tile(const int8_t* a, const int8_t* b, int64_t nq, const OuterOut& o) {
    __m256i acc[2 * R];
#pragma GCC unroll 16
    for (int i = 0; i < 2 * R; ++i) acc[i] = _mm256_setzero_si256();
    for (int64_t j = 0; j < nq; ++j) {
      const int8_t* bj = b + j * NR * 4;
      // One sequential run per panel from DRAM (decode): a line per step,
      // 1 KiB ahead, as the AVX2 tile.
      if constexpr (kStream == kStreamPanels) _mm_prefetch(reinterpret_cast<const char*>(bj + 1024), _MM_HINT_T0);
      const __m256i b0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bj));
      const __m256i b1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bj + 32));
      const int8_t* aj = a + j * MR * 4;
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        int32_t quad;
        std::memcpy(&quad, aj + 4 * r, 4);
        const __m256i av = _mm256_set1_epi32(quad);
        dpbusd(acc[2 * r], av, b0);
        dpbusd(acc[2 * r + 1], av, b1);
      }
    }
    // Remove the bias: acc -= 128 * colsum (wrapping, exact in the end).
    const __m256i c0 = _mm256_slli_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(o.colsum)), 7);
    const __m256i c1 = _mm256_slli_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(o.colsum + 8)), 7);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      acc[2 * r] = _mm256_sub_epi32(acc[2 * r], c0);
      acc[2 * r + 1] = _mm256_sub_epi32(acc[2 * r + 1], c1);
    }
    ymm_outer_store<R>(acc, o);
  }
};

}  // namespace
}  // namespace LLMACCEL_CPU_CAPABILITY

// Plain-weight int8_mm calls with fewer rows than this run the dot-product
// tile on the columns in place (packing B costs more below it; as AVX2).
constexpr int64_t kOuterMinRowsPlainVnni = 64;

void int8_mm_avxvnni(const Int8MMProblem& p) {
  if (p.b_packed) {
    run_int8_mm_outer<VnniOuter>(p);
    return;
  }
  if (p.x) {  // int8_linear on a plain weight; A is quantized to [-127, 127] by construction
    if (p.M <= kMR)
      linear_decode<YmmSign<VnniMadd>>(p);
    else
      run_int8_mm_outer<VnniOuter>(p);
    return;
  }
  if (p.M < kOuterMinRowsPlainVnni && !a_has_min(p))
    run_int8_mm<YmmSign<VnniMadd>>(p);
  else
    run_int8_mm_outer<VnniOuter>(p);
}
Int8MMLayout int8_mm_layout_avxvnni() { return {VnniOuter::NR, 4}; }  // packed weights feed the outer-product tile
}  // namespace llmaccel
