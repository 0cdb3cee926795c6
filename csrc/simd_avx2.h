// Small AVX2 helpers shared by the AVX2 (and higher) units, compiled with each unit's flags inside its
// capability namespace (common.h), so no copy built with wider flags can reach a lower unit.
#pragma once

#include <immintrin.h>

#include "common.h"

namespace llmaccel {
inline namespace LLMACCEL_CPU_CAPABILITY {  // see common.h
namespace {

// The sum of the 8 lanes in a fixed order: (lo half + hi half), then pairs, then the last two.
inline float hsum_ps(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

}  // namespace
}  // namespace LLMACCEL_CPU_CAPABILITY
}  // namespace llmaccel
