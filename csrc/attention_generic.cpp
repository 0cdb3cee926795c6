// Attention forward for any x86-64 (or other) CPU: plain C++ loops the
// compiler may vectorize with the baseline ISA.  Also the reference the
// AVX-512 variant is tested against.
#include <cstdint>
#include <cstring>

#include "attention_bwd_driver.h"

namespace llmaccel {
inline namespace LLMACCEL_CPU_CAPABILITY {  // see common.h
namespace {

// Scalar traits for exp2_poly (exp2_poly.h): a * b + c as written, so the
// generic build (no FMA flag) rounds the product and the sum separately.
struct F1 {
  using T = float;
  static float set1(float c) { return c; }
  static float fma(float a, float b, float c) { return a * b + c; }
};

// 2^x for one float: x = n + f with n = round(x), |f| <= 1/2, 2^f by the
// Cephes exp2f polynomial (relative error ~1.7e-7), 2^n placed in the
// exponent bits.  Exactly 0 below -126 (and for -inf); +inf above 128.
inline float fast_exp2(float x) {
  if (!(x >= -126.0f)) return x != x ? x : 0.0f;
  if (x > 128.0f) x = 128.0f;
  const float n = std::nearbyint(x);
  const float f = x - n;
  const float p = exp2_poly<F1>(f);
  // n in [-126, 128]: scale by 2^n in two steps so 2^128 overflows to inf
  // and no step needs a denormal or out-of-range exponent.
  const int ni = static_cast<int>(n);
  const int n1 = ni / 2, n2 = ni - n1;
  auto pow2 = [](int e) {
    const uint32_t bits = static_cast<uint32_t>(e + 127) << 23;
    float r;
    std::memcpy(&r, &bits, 4);
    return r;
  };
  return p * pow2(n1) * pow2(n2);
}

struct Generic {
  static constexpr int VL = 4;

  static void pack_kt(const float* k, int64_t k_sl, int64_t k_sd, int64_t n, int64_t D, float* kt, int64_t ldkt) {
    pack_kt_strided<VL>(k, k_sl, k_sd, n, D, kt, ldkt);
  }

  static void qk(int64_t M, int64_t n, int64_t D, const float* q, int64_t ldq, const float* kt, int64_t ldkt,
                 float* s, int64_t lds, const int64_t* /*row_n: computes every key*/) {
    const int64_t np = llmaccel::round_up(n, VL);
    for (int64_t r = 0; r < M; ++r) {
      float* srow = s + r * lds;
      for (int64_t j = 0; j < np; ++j) srow[j] = 0.0f;
      for (int64_t d = 0; d < D; ++d) {
        const float a = q[r * ldq + d];
        const float* kr = kt + d * ldkt;
        for (int64_t j = 0; j < np; ++j) srow[j] += a * kr[j];
      }
    }
  }

  static void qk_direct(int64_t M, int64_t n, int64_t D, const float* q, int64_t ldq, const float* k, int64_t k_sl,
                        float* s, int64_t lds) {
    for (int64_t r = 0; r < M; ++r)
      for (int64_t j = 0; j < n; ++j) {
        float acc = 0.0f;
        for (int64_t d = 0; d < D; ++d) acc += q[r * ldq + d] * k[j * k_sl + d];
        s[r * lds + j] = acc;
      }
  }

  static float rowmax(const float* x, int64_t n) {
    float m = kNegInf;
    for (int64_t j = 0; j < n; ++j) m = x[j] > m ? x[j] : m;
    return m;
  }

  static float exp_sum(float* x, int64_t n, float m) {
    float s = 0.0f;
    for (int64_t j = 0; j < n; ++j) {
      x[j] = fast_exp2((x[j] - m) * kLog2e);
      s += x[j];
    }
    return s;
  }

  static void pv(int64_t M, int64_t n, int64_t Dv, const float* p, int64_t ldp, const float* v, int64_t ldv,
                 const float* alpha, float* o, int64_t ldo, const int64_t* /*row_n*/) {
    for (int64_t r = 0; r < M; ++r) {
      float* orow = o + r * ldo;
      const float a = alpha[r];
      for (int64_t d = 0; d < Dv; ++d) orow[d] *= a;
      for (int64_t j = 0; j < n; ++j) {
        const float pj = p[r * ldp + j];
        const float* vr = v + j * ldv;
        for (int64_t d = 0; d < Dv; ++d) orow[d] += pj * vr[d];
      }
    }
  }

  static void pvt(int64_t n, int64_t m, int64_t Dv, const float* p, int64_t ldp, const float* v, int64_t ldv,
                  float* o, int64_t ldo) {
    for (int64_t i = 0; i < m; ++i) {
      const float* vr = v + i * ldv;
      for (int64_t r = 0; r < n; ++r) {
        const float pr = p[i * ldp + r];
        float* orow = o + r * ldo;
        for (int64_t d = 0; d < Dv; ++d) orow[d] += pr * vr[d];
      }
    }
  }

  static void exp2(int64_t n, const float* x, float* y) {
    for (int64_t i = 0; i < n; ++i) y[i] = fast_exp2(x[i]);
  }
};

}  // namespace
}  // namespace LLMACCEL_CPU_CAPABILITY

void attention_run_generic(const AttentionProblem& p) { run_attention<Generic>(p); }
void attention_bwd_generic(const AttentionBwdProblem& p) { run_attention_bwd<Generic>(p); }
void attention_exp2_generic(int64_t n, const float* x, float* y) { Generic::exp2(n, x, y); }
}  // namespace llmaccel
