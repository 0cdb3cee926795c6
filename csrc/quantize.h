// quantize_per_token: symmetric absmax int8 quantization of each row.
//   scale[m] = max_k |x[m][k]| / 127   (1 where that is 0: all-zero or underflowing rows)
//   q[m][k]  = clamp(round_half_even(x[m][k] * 127 / absmax), -127, 127)
//   a row holding NaN or +-Inf: scale NaN, q 0 (see row_scale)
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>

#include "common.h"

namespace llmaccel {
inline namespace LLMACCEL_CPU_CAPABILITY {

// Below this absmax, 127 / absmax is not a finite float: such rows are
// quantized with a double division instead of a float reciprocal.
constexpr float kTinyAbsmax = 1e-36f;

// absmax of one row as the bit pattern of max_k |x[k]|, computed on the
// integers: for non-NaN floats |x| orders like its bits (sign cleared) read
// as uint32, so this is an exact max that vectorizes without -ffast-math,
// and any NaN (bits above 0x7f800000) or Inf (0x7f800000) makes the result
// >= kNonFiniteBits: the row is non-finite.
constexpr uint32_t kNonFiniteBits = 0x7f800000u;
inline uint32_t row_absmax_bits(const float* x, int64_t K) {
  uint32_t m = 0;
  for (int64_t k = 0; k < K; ++k) {
    uint32_t b;
    __builtin_memcpy(&b, x + k, 4);
    b &= 0x7fffffffu;
    m = b > m ? b : m;
  }
  return m;
}

// Numerics of a row (documented in llmaccel/ops/quantize.py):
//   finite, absmax > 0   scale = absmax / 127
//   all zero (or absmax / 127 underflows)   scale = 1, q = 0 (or the double-division path)
//   NaN or +-Inf anywhere in the row   scale = NaN, q = 0, so everything
//     computed from the row (a dequantized value, an int8_linear output row) is NaN.
struct RowScale {
  float scale;     // what the caller stores
  float inv;       // 127 / absmax when usable
  bool tiny;       // quantize with a double division by scale instead (127 / absmax overflows)
  bool nonfinite;  // q = 0, scale = NaN
};
inline RowScale row_scale(const float* x, int64_t K) {
  const uint32_t bits = row_absmax_bits(x, K);
  RowScale r{};
  if (bits >= kNonFiniteBits) {
    r.scale = __builtin_nanf("");
    r.nonfinite = true;
    return r;
  }
  float amax;
  __builtin_memcpy(&amax, &bits, 4);
  const float s = amax / 127.0f;
  r.scale = s > 0.0f ? s : 1.0f;
  r.tiny = !(s > 0.0f && amax >= kTinyAbsmax);
  r.inv = r.tiny ? 0.0f : 127.0f / amax;
  return r;
}

// The codes of n values of a row with a usable reciprocal (RowScale::inv, not tiny):
//   dst[i] = uint8(int8(clamp(round_half_even(x[i] * inv), -127, 127))) ^ flip
// (flip = 0x80 stores u8 = q + 128 for u8 x s8 kernels).  The __restrict qualifiers are what let the
// compiler vectorize it (vroundps + vcvttps2dq + packs): with the uint8_t destination free to alias the
// floats, GCC 12 kept it scalar (vroundss).  One body for the int8_linear prologue and
// quantize_per_token, so both keep giving identical codes.
inline void quantize_codes(const float* __restrict x, int64_t n, float inv, uint8_t flip, uint8_t* __restrict dst) {
  for (int64_t i = 0; i < n; ++i) {
    const float q = std::min(127.0f, std::max(-127.0f, __builtin_nearbyintf(x[i] * inv)));
    dst[i] = static_cast<uint8_t>(static_cast<int8_t>(q)) ^ flip;
  }
}

// One row quantized per token (the numerics above): writes the K codes to q and returns the row's scale.
// The body quantize_per_token and the int8-activation sparse kernels share (int8_linear's prologue packs
// the same codes in chunks through the same row_scale / quantize_codes).
inline float quantize_row(const float* __restrict x, int64_t K, int8_t* __restrict q) {
  const RowScale rs = row_scale(x, K);
  if (rs.nonfinite) {
    for (int64_t k = 0; k < K; ++k) q[k] = 0;
  } else if (!rs.tiny) {
    quantize_codes(x, K, rs.inv, 0, reinterpret_cast<uint8_t*>(q));
  } else {
    // 127 / amax overflows fp32 here (or the scale underflowed to 0 and became 1): divide in double instead.
    const double sd = rs.scale;
    for (int64_t k = 0; k < K; ++k)
      q[k] = static_cast<int8_t>(std::min(127.0, std::max(-127.0, __builtin_nearbyint(x[k] / sd))));
  }
  return rs.scale;
}

// Every row of x [M, K] (row stride x_sm) quantized into q (row stride q_sm), scales to scale[M].  Rows are
// independent; each is read twice (absmax, then codes) while it is still in cache.  Compiled once per ISA unit
// (quantize.cpp, quantize_avx2.cpp, quantize_avx512.cpp): the same source, vectorized by each unit's flags
// (SSE2 has no unsigned max or round-to-int, so the generic build's absmax and codes run scalar; AVX2 and
// AVX-512 get vpmaxud and vroundps / vrndscaleps).  Same arithmetic everywhere: identical q and scale.
inline void quantize_rows(int64_t M, int64_t K, const float* x, int64_t x_sm, int8_t* q, int64_t q_sm, float* scale,
                          int nthreads) {
#pragma omp parallel for num_threads(nthreads) schedule(static)
  for (int64_t m = 0; m < M; ++m) {
    scale[m] = quantize_row(x + m * x_sm, K, q + m * q_sm);
  }
}

}  // namespace LLMACCEL_CPU_CAPABILITY

// Validated entry point: `variant` "" picks the best this CPU runs (variants.h), else that one.
void quantize_per_token(int64_t M, int64_t K, const float* x, int64_t x_sm, int8_t* q, int64_t q_sm, float* scale,
                        int nthreads, const std::string& variant = "");

// The generic kernel (arguments already validated).
void quantize_per_token_generic(int64_t M, int64_t K, const float* x, int64_t x_sm, int8_t* q, int64_t q_sm,
                                float* scale, int nthreads);
void quantize_per_token_avx2(int64_t M, int64_t K, const float* x, int64_t x_sm, int8_t* q, int64_t q_sm,
                             float* scale, int nthreads);
void quantize_per_token_avx512(int64_t M, int64_t K, const float* x, int64_t x_sm, int8_t* q, int64_t q_sm,
                               float* scale, int nthreads);

}  // namespace llmaccel
