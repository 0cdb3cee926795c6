// Weight-only int8_linear for AVX2 + FMA CPUs (Haswell and later, Zen 1-3);
// chosen only when CPUID reports both.
//
// M >= 3: the shared register-tile kernel (int8_linear_wo_kernel.h),
// vectorized by the compiler with 256-bit registers and FMA.
//
// M <= 2 (decode): a GEMV that streams the weight once, sequentially.
//     y[m][n] = w_scale[n] * sum_k x[m][k] * float(W[n][k]) + bias[n]
// Each thread owns one contiguous range of output channels, i.e. one
// contiguous run of W's rows (when ldw == K), and walks it row after row: a
// single forward stream the hardware prefetcher follows, plus a software
// prefetch a few lines ahead.  Per 32 weight bytes: 4 vpmovsxbd + 4
// vcvtdq2ps + 4 FMA per row of x into 4 independent accumulators (enough
// chains to hide the FMA latency); x (K floats) stays in L1.  The tile
// kernel instead interleaves 4 rows of W (4 short streams, one page each at
// K = 4096), which the prefetcher barely ramps up on: it streamed 8.4 GB/s
// where a plain read runs at ~28.
#include <immintrin.h>

#include "int8_linear_wo_kernel.h"

namespace {

// Bytes ahead of the current position that the software prefetch asks for.
constexpr int64_t kWoPrefetchBytes = 1024;

inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Sign-extends 8 int8 at p to int32 and converts to float.
inline __m256 load8_i8_as_f32(const int8_t* p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}

// J independent 8-lane accumulator chains per row of x: one FMA chain has a 4-cycle latency, so 4 chains
// for one row (M = 1) were latency-bound (12-13 GB/s of cache-resident weight per core on Zen 3, against
// 20 for the W8A8 kernel); M = 1 takes 8 chains, M = 2 has 2 x 4 already.
template <int R>
void wo_gemv_rows(const llmaccel::Int8LinearWOProblem& p, int64_t n_begin, int64_t n_end) {
  constexpr int J = R == 1 ? 8 : 4;
  constexpr int64_t kStep = 8 * J;
  const int64_t K = p.K, kfull = K / kStep * kStep, k8 = K & ~int64_t(7);
  for (int64_t n = n_begin; n < n_end; ++n) {
    const int8_t* w = p.w + n * p.ldw;
    __m256 acc[R][J];
    for (int r = 0; r < R; ++r)
      for (int j = 0; j < J; ++j) acc[r][j] = _mm256_setzero_ps();
    for (int64_t k = 0; k < kfull; k += kStep) {
      _mm_prefetch(reinterpret_cast<const char*>(w + k + kWoPrefetchBytes), _MM_HINT_T0);
      if (kStep > 64) _mm_prefetch(reinterpret_cast<const char*>(w + k + 64 + kWoPrefetchBytes), _MM_HINT_T0);
      __m256 wf[J];
      for (int j = 0; j < J; ++j) wf[j] = load8_i8_as_f32(w + k + 8 * j);
      for (int r = 0; r < R; ++r) {
        const float* x = p.x + r * p.x_sm + k;
        for (int j = 0; j < J; ++j) acc[r][j] = _mm256_fmadd_ps(_mm256_loadu_ps(x + 8 * j), wf[j], acc[r][j]);
      }
    }
    for (int64_t k = kfull; k < k8; k += 8) {  // 8-wide tail
      const __m256 wf = load8_i8_as_f32(w + k);
      for (int r = 0; r < R; ++r) acc[r][0] = _mm256_fmadd_ps(_mm256_loadu_ps(p.x + r * p.x_sm + k), wf, acc[r][0]);
    }
    const float scale = p.w_scale[n], bias = p.bias ? p.bias[n] : 0.0f;
    for (int r = 0; r < R; ++r) {
      for (int j = 2 * (J / 2) - 1; j >= 1; j -= 2) acc[r][j - 1] = _mm256_add_ps(acc[r][j - 1], acc[r][j]);
      __m256 t = acc[r][0];
      for (int j = 2; j < J; j += 2) t = _mm256_add_ps(t, acc[r][j]);
      float s = hsum8(t);
      const float* x = p.x + r * p.x_sm;
      for (int64_t k = k8; k < K; ++k) s += x[k] * static_cast<float>(w[k]);
      p.y[r * p.y_sm + n] = s * scale + bias;
    }
  }
}

void wo_gemv(const llmaccel::Int8LinearWOProblem& p) {
  const int64_t N = p.N;
#pragma omp parallel num_threads(p.nthreads)
  {
    // One contiguous range of channels per thread (ends rounded to 8 rows
    // so no two threads share a cache line of y).
    const int t = omp_get_thread_num(), T = omp_get_num_threads();
    const int64_t per = llmaccel::round_up(llmaccel::ceil_div(N, T), 8);
    const int64_t n0 = std::min<int64_t>(N, t * per), n1 = std::min<int64_t>(N, n0 + per);
    if (p.M == 1)
      wo_gemv_rows<1>(p, n0, n1);
    else
      wo_gemv_rows<2>(p, n0, n1);
  }
}

}  // namespace

namespace llmaccel {
void int8_linear_wo_avx2(const Int8LinearWOProblem& p) {
  if (p.M <= 2)
    wo_gemv(p);
  else
    run_int8_linear_wo(p);
}
}  // namespace llmaccel
