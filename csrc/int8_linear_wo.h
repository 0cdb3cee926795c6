// int8_linear, act="weight_only": y[M, N] = x[M, K] @ (W[N, K] * w_scale[:, None])^T + bias
// in fp32, with the int8 weight converted to float in registers (never
// dequantized to memory) and w_scale applied once per output in the epilogue:
//     y[m][n] = w_scale[n] * sum_k x[m][k] * float(W[n][k]) + bias[n]
#pragma once

#include <cstdint>
#include <string>

namespace llmaccel {

struct Int8LinearWOProblem {
  int64_t M, N, K;
  const float* x;
  int64_t x_sm;  // row stride of x (k contiguous)
  const int8_t* w;
  int64_t ldw;  // row stride of W (k contiguous)
  const float* w_scale;
  const float* bias;  // may be null
  float* y;
  int64_t y_sm;
  int nthreads;
  // Software prefetch ahead in the decode GEMV's weight rows (int8_linear_wo_gemv.h); a unit may turn it off
  // where it was measured to cost (int8_linear_wo_avx512vnni.cpp).
  bool prefetch = true;
};

void int8_linear_wo_generic(const Int8LinearWOProblem& p);
void int8_linear_wo_avx2(const Int8LinearWOProblem& p);
void int8_linear_wo_avx512vnni(const Int8LinearWOProblem& p);

// Validated entry point; variant "" picks the best for this CPU.
void int8_linear_weight_only(int64_t M, int64_t N, int64_t K, const float* x, int64_t x_sm, const int8_t* w,
                             int64_t ldw, const float* w_scale, const float* bias, float* y, int64_t y_sm,
                             int nthreads, const std::string& variant);

}  // namespace llmaccel
