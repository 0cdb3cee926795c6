#include "quantize.h"

#include <omp.h>

#include <algorithm>
#include <cmath>

#include "common.h"
#include "variants.h"

namespace llmaccel {

void quantize_per_token(int64_t M, int64_t K, const float* x, int64_t x_sm, int8_t* q, int64_t q_sm, float* scale,
                        int nthreads, const std::string& variant) {
  const char* op = "quantize_per_token";
  check_matrix(op, "x", x, M, K, x_sm, 1);
  check_matrix(op, "q", q, M, K, q_sm, 1);
  check_matrix(op, "scale", scale, 1, M, 0, 1);
  if (nthreads < 1) fail(op, "nthreads must be >= 1");
  pick(Family::quantize_per_token, op, variant).kernels.quantize(M, K, x, x_sm, q, q_sm, scale, nthreads);
}

void quantize_per_token_generic(int64_t M, int64_t K, const float* x, int64_t x_sm, int8_t* q, int64_t q_sm,
                                float* scale, int nthreads) {
  // Same arithmetic as the fused prologue of int8_linear (int8_mm_driver.h), so both give identical q.
  quantize_rows(M, K, x, x_sm, q, q_sm, scale, nthreads);
}

}  // namespace llmaccel
