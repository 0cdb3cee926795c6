// The weight-only decode GEMV (M <= 2) on u8 x s8 dot products (vpdpbusd), written over vector traits:
//     y[m][n] = w_scale[n] * sum_k x[m][k] * W[n][k] + bias[n]
// with each row of x carried as a 24-bit fixed-point integer in three byte digits, so the int8 weight
// enters the multiply-adds as it is stored: no sign extension, no conversion to float.
//
// Why.  The fp32 GEMV (int8_linear_wo_gemv.h) spends three vector operations per V::W weight bytes (sign
// extend to int32, convert, FMA).  Here 64 weight bytes cost 4 vpdpbusd in all (three digits and the row sum)
// and one load.  Measured on a 2-core Zen 4 VM (AVX-512 executed as two 256-bit halves), same process,
// interleaved, weights on huge pages, no software prefetch on either side: from L2/L3 (one thread) 1.35x the
// fp32 GEMV (28-32 against 21-23 GB/s); streaming 8-32 layers from DRAM 0.98-1.05x on 2 threads and
// 1.01-1.13x on one (16 x 5632 x 2048, 8 x 4096 x 4096, 16 x 2048 x 5632, 32 x 2048 x 2048): from DRAM the
// stream, not the arithmetic, is the limit there.  Not measured on an Intel CPU.
//
// The math, per row of x (one scale per row; x[k] of the row, K values):
//     a = max_k |x[k]|,  s = a / (2^23 - 1)
//     q[k] = round(x[k] / s)  in [-(2^23 - 1), 2^23 - 1],   x[k] = s * q[k] + e[k],  |e[k]| <= s / 2 (+ fp32
//                                                           rounding of x[k] / s): about a * 2^-24
//     u[k] = q[k] + 2^23 = 65536 * d2[k] + 256 * d1[k] + d0[k]      (unsigned 24 bits, three u8 digits)
//     sum_k q[k] W[n][k] = 65536 * D2 + 256 * D1 + D0 - 2^23 * C,   Di = sum_k di[k] W[n][k],  C = sum_k W[n][k]
//     y[m][n] = float(s * double(that int64 sum)) * w_scale[n] + bias[n]
// Every integer sum is exact: one vpdpbusd adds 4 products of at most 255 * 128 to a lane, a lane meets
// ceil(K / 64) of them and a row's 16 lanes are summed in int32, so |sum| <= 32640 * K < 2^31 for K <=
// kWoVnniMaxK; the int64 combination is exact.  The only rounding is x's to 24 bits (as large as fp32's own
// rounding of the row's largest element) and the final scaling, so results do not depend on the thread count
// or on which weight rows share a lockstep group.
//
// Where x cannot be carried so (a non-finite value; a row maximum below 1e-30, where 1 / s overflows; K
// above kWoVnniMaxK) wo_gemv_vnni returns false and the caller runs the fp32 GEMV.
//
// Traits V: I (kBytes bytes), zero(), ones() (every byte 1), load(p), load_part(p, n) (the first n < kBytes
// bytes, the rest zero, reading only p[0 .. n)), dp(acc, u, s) (acc += 4-byte u8 x s8 dot products per int32
// lane), sum4(a, b, c, d, out) (out[i] = the lane sum of the i-th, in int32); kGroupRows (weight rows walked
// in lockstep, a segment apart: int8_linear_wo_gemv.h says why), kPrefetchBytes.
#pragma once

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "common.h"
#include "int8_linear_wo.h"

namespace llmaccel {
inline namespace LLMACCEL_CPU_CAPABILITY {  // see common.h
namespace {

constexpr int64_t kWoVnniMaxK = 65536;
constexpr int32_t kWoQMax = (1 << 23) - 1;

// The digits of the rows of x: digit i of row r, element k at d[i][r * ld + k] (zero padded to ld, a multiple
// of the vector width); s[r] the row's scale.
struct WoDigits {
  const uint8_t* d[3];
  int64_t ld;
  const float* s;
};

// Row x[0 .. K) to digits (see the file comment); false where the row cannot be carried so.
inline bool wo_digits(const float* x, int64_t K, uint8_t* d0, uint8_t* d1, uint8_t* d2, float* s) {
  float a = 0.0f;
  bool finite = true;
  for (int64_t k = 0; k < K; ++k) {  // vectorizes: a max and an and of comparisons
    const float v = std::fabs(x[k]);
    a = v > a ? v : a;
    finite &= v <= 3.4028235e38f;  // false for inf and NaN
  }
  if (!finite || (a != 0.0f && a < 1e-30f)) return false;
  const float inv = a == 0.0f ? 0.0f : static_cast<float>(kWoQMax) / a;
  *s = a / static_cast<float>(kWoQMax);
  for (int64_t k = 0; k < K; ++k) {
    const float qf = std::min<float>(kWoQMax, std::max<float>(-kWoQMax, std::nearbyint(x[k] * inv)));
    const uint32_t u = static_cast<uint32_t>(static_cast<int32_t>(qf) + (1 << 23));
    d0[k] = static_cast<uint8_t>(u);
    d1[k] = static_cast<uint8_t>(u >> 8);
    d2[k] = static_cast<uint8_t>(u >> 16);
  }
  return true;
}

// One step: each of the G rows' weight vectors meets the row sum and every digit of every row of x.
template <class V, int R, int G>
inline __attribute__((always_inline)) void wo_vnni_step(typename V::I (&acc)[G][R][3], typename V::I (&csum)[G],
                                                        typename V::I ones, const WoDigits& xd, int64_t k,
                                                        const typename V::I (&wv)[G]) {
  typename V::I xv[R][3];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 3
    for (int i = 0; i < 3; ++i) xv[r][i] = V::load(xd.d[i] + r * xd.ld + k);
#pragma GCC unroll 8
  for (int g = 0; g < G; ++g) {
    V::dp(csum[g], ones, wv[g]);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 3
      for (int i = 0; i < 3; ++i) V::dp(acc[g][r][i], xv[r][i], wv[g]);
  }
}

// G weight rows n, n + step, ... (a segment apart) against R rows of x.
template <class V, int R, int G>
inline void wo_vnni_group(const Int8LinearWOProblem& p, const WoDigits& xd, int64_t n, int64_t step = 1) {
  constexpr int64_t L = V::kBytes;
  const int64_t K = p.K, kfull = K / L * L;
  const int8_t* w[G];
#pragma GCC unroll 8
  for (int g = 0; g < G; ++g) w[g] = p.w + (n + g * step) * p.ldw;
  const typename V::I ones = V::ones();
  typename V::I acc[G][R][3], csum[G];
#pragma GCC unroll 8
  for (int g = 0; g < G; ++g) {
    csum[g] = V::zero();
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 3
      for (int i = 0; i < 3; ++i) acc[g][r][i] = V::zero();
  }
  for (int64_t k = 0; k < kfull; k += L) {
    typename V::I wv[G];
#pragma GCC unroll 8
    for (int g = 0; g < G; ++g) {
      if (p.prefetch) _mm_prefetch(reinterpret_cast<const char*>(w[g] + k + V::kPrefetchBytes), _MM_HINT_T0);
      wv[g] = V::load(w[g] + k);
    }
    wo_vnni_step<V, R, G>(acc, csum, ones, xd, k, wv);
  }
  if (kfull < K) {  // the row's last K % L bytes; x's digits are zero padded past K
    typename V::I wv[G];
#pragma GCC unroll 8
    for (int g = 0; g < G; ++g) wv[g] = V::load_part(w[g] + kfull, static_cast<int>(K - kfull));
    wo_vnni_step<V, R, G>(acc, csum, ones, xd, kfull, wv);
  }
#pragma GCC unroll 8
  for (int g = 0; g < G; ++g) {
    const int64_t ng = n + g * step;
    const float scale = p.w_scale[ng], bias = p.bias ? p.bias[ng] : 0.0f;
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      int32_t t[4];
      V::sum4(acc[g][r][0], acc[g][r][1], acc[g][r][2], csum[g], t);
      const int64_t q = 65536 * int64_t(t[2]) + 256 * int64_t(t[1]) + int64_t(t[0]) - (int64_t(1) << 23) * t[3];
      const float dot = static_cast<float>(static_cast<double>(xd.s[r]) * static_cast<double>(q));
      p.y[r * p.y_sm + ng] = dot * scale + bias;
    }
  }
}

// Rows n_begin .. n_end - 1 cut into G segments walked in lockstep (as wo_gemv_rows), then the rest one by one.
template <class V, int R>
void wo_vnni_rows(const Int8LinearWOProblem& p, const WoDigits& xd, int64_t n_begin, int64_t n_end) {
  // Two rows of x: half the lockstep rows, so the accumulators (G * (3 R + 1)) fit the register file.
  constexpr int G = R == 1 ? V::kGroupRows : std::max(1, V::kGroupRows / 2);
  const int64_t seg = G > 1 ? (n_end - n_begin) / G : 0;
  if constexpr (G > 1)
    for (int64_t n = n_begin; n < n_begin + seg; ++n) wo_vnni_group<V, R, G>(p, xd, n, seg);
  for (int64_t n = n_begin + G * seg; n < n_end; ++n) wo_vnni_group<V, R, 1>(p, xd, n);
}

// The GEMV; false (nothing written) where x cannot be carried as digits: the caller runs the fp32 GEMV.
template <class V>
bool wo_gemv_vnni(const Int8LinearWOProblem& p) {
  const int64_t K = p.K, N = p.N, M = p.M;
  if (K > kWoVnniMaxK) return false;
  const int64_t ld = round_up(K, V::kBytes);
  // The digits are written before the parallel region (3 bytes per value of x: microseconds), so no thread
  // waits on another inside it.
  std::vector<uint8_t> digits(static_cast<size_t>(3 * M * ld), 0);
  float s[2] = {0.0f, 0.0f};
  uint8_t* d[3] = {digits.data(), digits.data() + M * ld, digits.data() + 2 * M * ld};
  for (int64_t m = 0; m < M; ++m)
    if (!wo_digits(p.x + m * p.x_sm, K, d[0] + m * ld, d[1] + m * ld, d[2] + m * ld, &s[m])) return false;
  const WoDigits xd{{d[0], d[1], d[2]}, ld, s};
#pragma omp parallel num_threads(p.nthreads)
  {
    // One contiguous range of channels per thread (ends rounded to 8 rows: no shared cache line of y).
    const int th = omp_get_thread_num(), T = omp_get_num_threads();
    const int64_t per = round_up(ceil_div(N, T), 8);
    const int64_t n0 = std::min<int64_t>(N, th * per), n1 = std::min<int64_t>(N, n0 + per);
    if (M == 1)
      wo_vnni_rows<V, 1>(p, xd, n0, n1);
    else
      wo_vnni_rows<V, 2>(p, xd, n0, n1);
  }
  return true;
}

}  // namespace
}  // namespace LLMACCEL_CPU_CAPABILITY
}  // namespace llmaccel
