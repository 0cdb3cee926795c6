// int8_mm for CPUs with AVX-VNNI but no AVX-512: Alder Lake and later
// clients, Sierra Forest / Grand Ridge Xeons (E-cores), and any AVX2 server
// that adds the VEX-encoded vpdpbusd.  Built with -mavx2 -mfma -mf16c
// -mavxvnni; only called when CPUID reports AVX-VNNI (CPUID.7.1:EAX bit 4).
//
// vpdpbusd (ymm) multiplies 32 unsigned bytes by 32 signed bytes and adds
// each group of four products to one of 8 int32 lanes, without saturation:
// one instruction for what AVX2 spends vpmaddubsw + vpmaddwd + vpaddd on.
//
// * Outer-product tile (packed weights, int8_linear, and plain-weight int8_mm
//   from 64 rows): int8_mm_outer_vnni.h's, on A stored as u8 = a + 128 (any
//   int8 A exact), 6 rows x 16 columns of ymm.
// * Dot-product tile for small M on plain columns (int8_mm_ymm.h's YmmSign)
//   with the sign trick: u = |b|, s = vpsignb(a, b), vpdpbusd(acc, u, s).
//   int8_mm with a -128 in A takes the outer-product tile instead.
//
// Every vpdpbusd here is written as "{vex} vpdpbusd": the assembler would
// otherwise choose the EVEX (AVX-512 VL) encoding, which SIGILLs on the CPUs
// this unit is for (tests/test_isa.py disassembles the unit to check).
#include "int8_mm_outer_vnni.h"
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

// The outer tile's traits (int8_mm_outer_vnni.h): 6 rows x 16 columns = 12 accumulators + 2 B + 1
// broadcast of the 16 ymm registers.
struct VnniYmm {
  using I = __m256i;
  static constexpr int MR = 6;
  static constexpr int kBytes = 32;
  static I zero() { return _mm256_setzero_si256(); }
  static I load(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }
  static I set1(int32_t v) { return _mm256_set1_epi32(v); }
  static I sub(I a, I b) { return _mm256_sub_epi32(a, b); }
  static I slli7(I a) { return _mm256_slli_epi32(a, 7); }
  static inline __attribute__((always_inline)) void dpbusd(I& acc, I u, I s) { llmaccel::dpbusd(acc, u, s); }
  // A line per step, 1 KiB ahead, as the AVX2 tile.
  static void prefetch_panel(const int8_t* p) { _mm_prefetch(reinterpret_cast<const char*>(p + 1024), _MM_HINT_T0); }
  template <int R>
  static inline __attribute__((always_inline)) void store(const I* acc, const OuterOut& o) {
    ymm_outer_store<R>(acc, o);
  }
};
using VnniOuter = VnniOuterTile<VnniYmm>;

}  // namespace
}  // namespace LLMACCEL_CPU_CAPABILITY

void int8_mm_avxvnni(const Int8MMProblem& p) { ymm_int8_mm<VnniMadd, VnniOuter>(p); }
Int8MMLayout int8_mm_layout_avxvnni() { return {VnniOuter::NR, 4}; }  // packed weights feed the outer-product tile
}  // namespace llmaccel
