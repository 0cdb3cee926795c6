// int8_linear act="dynamic" entry point: validation, packed-weight check,
// then the int8_mm variant with its fused quantize prologue and fp32 epilogue.
#include <cmath>
#include <string>
#include <vector>

#include "activation.h"
#include "common.h"
#include "int8_mm.h"
#include "int8_packed.h"
#include "variants.h"

namespace llmaccel {

namespace {

// The `activation` name -> its epilogue code (activation.h).
int parse_activation(const char* op, const std::string& name) {
  if (name.empty() || name == "none") return kActNone;
  if (name == "gelu") return kActGelu;
  if (name == "gelu_tanh") return kActGeluTanh;
  if (name == "relu") return kActRelu;
  fail(op, "activation must be one of '', 'none', 'gelu', 'gelu_tanh', 'relu', got '" + name + "'");
}

}  // namespace

void int8_linear_dynamic(int64_t M, int64_t N, int64_t K, const float* x, int64_t x_sm, const int8_t* w,
                         int64_t ldw, const int8_t* w_packed, const float* w_scale, const float* bias, float* y,
                         int64_t y_sm, int nthreads, const std::string& variant, const float* smooth,
                         const std::string& activation, const float* residual, int64_t r_sm) {
  const char* op = "int8_linear";
  const int act = parse_activation(op, activation);
  check_matrix(op, "x", x, M, K, x_sm, 1);
  check_matrix(op, "w_int8", w, N, K, ldw, 1);
  check_matrix(op, "out", y, M, N, y_sm, 1);
  check_matrix(op, "w_scale", w_scale, 1, N, 0, 1);
  if (bias) check_matrix(op, "bias", bias, 1, N, 0, 1);
  if (residual) {
    check_matrix(op, "residual", residual, M, N, r_sm, 1);
    if (M > 1 && N > 0 && r_sm < N) fail(op, "residual rows overlap (row stride < N)");
    // In place (residual == y, same rows) reads each element before writing it; any other overlap would read
    // outputs already written.
    const float* r_end = residual + (M - 1) * r_sm + N;
    const float* y_end = y + (M - 1) * y_sm + N;
    const bool same = residual == y && r_sm == y_sm;
    if (M > 0 && N > 0 && !same && residual < y_end && y < r_end)
      fail(op, "residual overlaps out (only residual == out, in place, may share memory)");
  }
  if (smooth) {
    check_matrix(op, "smooth", smooth, 1, K, 0, 1);
    // A zero, negative or non-finite factor has no meaning as a SmoothQuant
    // scale and would quietly turn rows into inf / NaN.  K reads per call.
    for (int64_t k = 0; k < K; ++k)
      if (!(std::isfinite(smooth[k]) && smooth[k] > 0.0f))
        fail(op, "smooth must be finite and > 0 everywhere, got smooth[" + std::to_string(k) + "] = " +
                     std::to_string(smooth[k]));
  }
  if (K > kInt8MMMaxK)
    fail(op, "K = " + std::to_string(K) + " exceeds " + std::to_string(kInt8MMMaxK) +
                 ": the exact int32 accumulator could overflow");
  if (M > 1 && N > 0 && y_sm < N) fail(op, "out rows overlap (row stride < N)");
  if (nthreads < 1) fail(op, "nthreads must be >= 1, got " + std::to_string(nthreads));
  const Variant& v = pick(Family::int8_mm, op, variant);
  if (M == 0 || N == 0) return;
  if (K == 0) {
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n) y[m * y_sm + n] = bias ? bias[n] : 0.0f;
    for (int64_t m = 0; m < M; ++m) apply_activation(act, y + m * y_sm, static_cast<int>(N));
    for (int64_t m = 0; residual && m < M; ++m)
      for (int64_t n = 0; n < N; ++n) y[m * y_sm + n] += residual[m * r_sm + n];
    return;
  }
  const PackedPanels packed = w_packed ? open_packed(op, w_packed, v, N, K) : PackedPanels{};
  const int8_t* panels = packed.panels;
  const int32_t* colsum = packed.colsum;
  std::vector<float> x_scale(static_cast<size_t>(M));
  Int8MMProblem p{M, N, K, nullptr, 0, 1, w_packed ? panels : w, ldw, w_packed != nullptr, colsum,
                  nullptr, 0, 1, nthreads};
  p.x = x;
  p.x_sm = x_sm;
  p.x_scale = x_scale.data();
  p.w_scale = w_scale;
  p.bias = bias;
  p.y = y;
  p.y_sm = y_sm;
  // One division per channel here, a product per element in the prologue.
  std::vector<float> smooth_inv(smooth ? static_cast<size_t>(K) : 0);
  for (int64_t k = 0; smooth && k < K; ++k) smooth_inv[k] = 1.0f / smooth[k];
  p.smooth_inv = smooth ? smooth_inv.data() : nullptr;
  p.activation = act;
  p.residual = residual;
  p.r_sm = r_sm;
  v.kernels.int8_mm(p);
}

}  // namespace llmaccel
