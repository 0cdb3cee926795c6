#pragma once
// The VNNI outer-product tile (int8_mm_outer.h's policy interface), written
// once for the AVX-VNNI unit (ymm, VEX vpdpbusd) and the AVX-512 VNNI unit
// (zmm), each compiled with its own flags inside its capability namespace.
//
// A is packed as u8 = a + 128 (kAFlip), so any int8 A is exact, -128
// included, and
//     sum_k (a_k + 128) b_k = a.b + 128 * colsum(b);
// the tile takes 128 * colsum off once at the end (int32 arithmetic wraps
// modulo 2^32, and the exact result fits in int32 for K <= 131071).  Per
// quad step: the panel's two column vectors (shared by every row), then per
// row one 4-byte broadcast of A and two vpdpbusd, nothing else.
//
// The traits V (int8_mm_avxvnni.cpp, int8_mm_avx512vnni.cpp) provide:
//   I                       the integer vector (8 or 16 int32 lanes)
//   MR, kBytes              rows per tile; bytes per vector (NR = 2 * kBytes / 4 columns)
//   zero(), load(p), set1(int32), sub(a, b), slli7(a)
//   dpbusd(acc, u, s)       acc += dot4(u as u8, s as s8) per lane, in place
//   prefetch_panel(p)       the decode stream's software prefetch for the step at p
//   store<R>(acc, o)        the R x NR tile through o (int32 C or the fused fp32 epilogue)
#include <cstring>

#include "int8_mm_outer.h"

namespace llmaccel {
inline namespace LLMACCEL_CPU_CAPABILITY {  // see common.h
namespace {

template <class V>
struct VnniOuterTile {
  static constexpr int MR = V::MR;
  static constexpr int NR = 2 * V::kBytes / 4;
  static constexpr uint8_t kAFlip = 0x80;  // A packed as u8 = a + 128

  template <int R, int kStream>
  static void tile(const int8_t* a, const int8_t* b, int64_t nq, const OuterOut& o) {
    using I = typename V::I;
    I acc[2 * R];
#pragma GCC unroll 16
    for (int i = 0; i < 2 * R; ++i) acc[i] = V::zero();
    for (int64_t j = 0; j < nq; ++j) {
      const int8_t* bj = b + j * NR * 4;
      if constexpr (kStream == kStreamPanels) V::prefetch_panel(bj);  // one sequential run from DRAM (decode)
      const I b0 = V::load(bj), b1 = V::load(bj + V::kBytes);
      const int8_t* aj = a + j * MR * 4;
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        int32_t quad;
        std::memcpy(&quad, aj + 4 * r, 4);
        const I av = V::set1(quad);
        V::dpbusd(acc[2 * r], av, b0);
        V::dpbusd(acc[2 * r + 1], av, b1);
      }
    }
    // Remove the bias: acc -= 128 * colsum (wrapping, exact in the end).
    const I c0 = V::slli7(V::load(o.colsum)), c1 = V::slli7(V::load(o.colsum + NR / 2));
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      acc[2 * r] = V::sub(acc[2 * r], c0);
      acc[2 * r + 1] = V::sub(acc[2 * r + 1], c1);
    }
    V::template store<R>(acc, o);
  }
};

}  // namespace
}  // namespace LLMACCEL_CPU_CAPABILITY
}  // namespace llmaccel
