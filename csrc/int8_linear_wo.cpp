// int8_linear weight-only entry point: validation and variant selection.
#include "int8_linear_wo.h"

#include "common.h"
#include "variants.h"

namespace llmaccel {

void int8_linear_weight_only(int64_t M, int64_t N, int64_t K, const float* x, int64_t x_sm, const int8_t* w,
                             int64_t ldw, const float* w_scale, const float* bias, float* y, int64_t y_sm,
                             int nthreads, const std::string& variant) {
  const char* op = "int8_linear";
  check_matrix(op, "x", x, M, K, x_sm, 1);
  check_matrix(op, "w_int8", w, N, K, ldw, 1);
  check_matrix(op, "out", y, M, N, y_sm, 1);
  check_matrix(op, "w_scale", w_scale, 1, N, 0, 1);
  if (bias) check_matrix(op, "bias", bias, 1, N, 0, 1);
  if (M > 1 && N > 0 && y_sm < N) fail(op, "out rows overlap (row stride < N)");
  if (nthreads < 1) fail(op, "nthreads must be >= 1, got " + std::to_string(nthreads));
  const Variant& v = pick(Family::int8_linear_weight_only, op, variant);
  if (M == 0 || N == 0) return;
  Int8LinearWOProblem p{M, N, K, x, x_sm, w, ldw, w_scale, bias, y, y_sm, nthreads};
  v.kernels.int8_linear_wo(p);
}

}  // namespace llmaccel
