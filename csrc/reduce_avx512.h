// Horizontal sums of int32 zmm vectors, shared by the AVX-512 VNNI units (int8_mm's dot-product tile, the
// weight-only VNNI GEMV).  Only translation units built with AVX-512 flags include it; like every per-ISA
// helper it lives in the unit's capability namespace (common.h).
#pragma once

#include <immintrin.h>

#include "common.h"

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

}  // namespace
}  // namespace LLMACCEL_CPU_CAPABILITY
}  // namespace llmaccel
