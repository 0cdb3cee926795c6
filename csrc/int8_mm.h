// int8_mm: C[M, N] (int32) = A[M, K] (int8) @ B[K, N] (int8), exact.
//
// The public entry point (int8_mm.cpp) validates its arguments, brings B into
// "column-major" form (each column n contiguous along k, which is exactly the
// memory of an nn.Linear weight [N, K], so that common case needs no copy),
// and hands the problem to one ISA variant chosen at run time by CPUID.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace llmaccel {

// One matmul problem as the ISA variants see it.
//   A[m][k] = a[m * a_sm + k * a_sk]          (any strides)
//   B[k][n] = b[n * ldb + k]                  (columns contiguous in k), or,
//   when b_packed is set, the panel layout written by int8_mm_pack_b():
//   groups of NR columns, each group one contiguous run in which the
//   KALIGN-byte chunks of the NR columns alternate (zero padded), so a
//   small-M product streams B sequentially.
//   C[m][n] = c[m * c_sm + n * c_sn]          (written, never read)
struct Int8MMProblem {
  int64_t M, N, K;
  const int8_t* a;
  int64_t a_sm, a_sk;
  const int8_t* b;
  int64_t ldb;
  bool b_packed;
  const int32_t* b_colsum;  // column sums of B (N), or null: then computed by a ones row of A
  int32_t* c;
  int64_t c_sm, c_sn;
  int nthreads;

  // Optional fused prologue (int8_linear, act="dynamic").  When x is set, A
  // is not read: row m of x (fp32, x[m * x_sm + k]) is quantized per token
  // while it is packed,
  //     x_scale[m] = absmax_k |x[m][k]| / 127   (1 for an all-zero row)
  //     A[m][k]    = clamp(round_half_even(x[m][k] * 127 / absmax), -127, 127)
  // and x_scale (M floats, caller-owned scratch) receives the scales.
  // With smooth_inv set (the reciprocals r[k] = 1 / smooth[k], fp32, of
  // SmoothQuant's unfolded per-input-channel factor, K floats), the row
  // quantized is the fp32 product
  //     x'[m][k] = x[m][k] * r[k]
  // in place of x[m][k], both for the absmax and the codes: exactly what
  // torch's fp32 `x * torch.reciprocal(smooth)` computes, so every backend
  // gets the same q.
  const float* x = nullptr;
  int64_t x_sm = 0;
  float* x_scale = nullptr;
  const float* smooth_inv = nullptr;

  // Optional fused epilogue.  When y is set, C is not written; instead
  //     y[m * y_sm + n] = float(C[m][n]) * x_scale[m] * w_scale[n] + bias[n]
  // (bias may be null).  No int32 [M, N] result ever reaches memory.
  // activation (an Activation, activation.h) is then applied to that value
  // before the store: y = act(float(C) * x_scale * w_scale + bias).
  const float* w_scale = nullptr;
  const float* bias = nullptr;
  float* y = nullptr;
  int64_t y_sm = 0;
  int activation = 0;
  // Optional residual (fused epilogue only): y = act(...) + residual[m * r_sm + n],
  // added after the activation, one fp32 rounding, as torch's `y + residual`.
  // The transformer block's skip connection (BERT: LayerNorm(dense(h) + h_in))
  // then costs no pass of its own over [M, N].
  const float* residual = nullptr;
  int64_t r_sm = 0;
};

using Int8MMVariant = void (*)(const Int8MMProblem&);

// Register tile width and K alignment of a variant: they define its packed B layout.
struct Int8MMLayout {
  int nr;
  int kalign;
  // AMX B tiles: within each kalign-byte chunk of a group, the columns are
  // stored as TDPBSSD's B operand, 16 columns per tile, tile row t holding
  // each column's 4 bytes k = 4t .. 4t + 3 (int8_packed.cpp: pack_panels).
  bool amx_tiles = false;
};
Int8MMLayout int8_mm_layout_generic();
Int8MMLayout int8_mm_layout_avx2();
Int8MMLayout int8_mm_layout_avxvnni();
Int8MMLayout int8_mm_layout_avx512vnni();
Int8MMLayout int8_mm_layout_amx();

// The variants, one translation unit each, compiled with their own target flags.
void int8_mm_generic(const Int8MMProblem& p);
void int8_mm_avx2(const Int8MMProblem& p);
void int8_mm_avxvnni(const Int8MMProblem& p);
void int8_mm_avx512vnni(const Int8MMProblem& p);
void int8_mm_amx(const Int8MMProblem& p);

// Largest K for which every exact result fits in int32: |sum| <= K * 128 * 128.
constexpr int64_t kInt8MMMaxK = (int64_t(1) << 31) / (128 * 128) - 1;  // 131071

// Validated entry point.  `variant` is "" (best for this CPU) or a name from
// int8_mm_variants().  Strides are in elements.
void int8_mm(int64_t M, int64_t N, int64_t K, const int8_t* a, int64_t a_sm, int64_t a_sk, const int8_t* b,
             int64_t b_sk, int64_t b_sn, int32_t* c, int64_t c_sm, int64_t c_sn, int nthreads,
             const std::string& variant);

// int8_linear, act="dynamic", fp32 in and out:
//   y[M, N] = dequant(quantize_per_token(x[M, K]) @ W[N, K]^T) + bias
// with W row n at w + n * ldw (k contiguous), per-channel w_scale[N], bias[N]
// or null.  One fused pass: quantize while packing, exact int32 core, fp32
// epilogue.
// If w_packed is non-null it must be int8_mm_pack_b(variant, N, K, w, ldw)
// of the same weight, and is read instead of w.
// smooth (K floats, finite and > 0, or null): x is quantized as x * (1 / smooth)
// (fp32 division per element, see Int8MMProblem).  activation: "" or "none",
// "gelu" (erf), "gelu_tanh", "relu", applied in the fp32 epilogue.
// residual (M x N floats, row r at residual + r * r_sm, or null) is added
// after the activation: y = act(...) + residual.  It may be y itself (in
// place) but must not overlap y otherwise.
void int8_linear_dynamic(int64_t M, int64_t N, int64_t K, const float* x, int64_t x_sm, const int8_t* w,
                         int64_t ldw, const int8_t* w_packed, const float* w_scale, const float* bias, float* y,
                         int64_t y_sm, int nthreads, const std::string& variant, const float* smooth = nullptr,
                         const std::string& activation = "", const float* residual = nullptr, int64_t r_sm = 0);

// Packed (panel) layout of a weight W [N, K] (row n at w + n * ldw, k
// contiguous) for `variant`: int8_mm_packed_size() bytes, written to `out`:
// a 64-byte header (variant, tile layout, N, K, format version; checked by
// int8_linear_dynamic), the panels, then (at a 64-byte aligned offset) the N
// int32 column sums sum_k W[n][k], which the u8 x s8 VNNI kernel needs for
// its +128 bias.
int64_t int8_mm_packed_size(const std::string& variant, int64_t N, int64_t K);
void int8_mm_pack_b(const std::string& variant, int64_t N, int64_t K, const int8_t* w, int64_t ldw, int8_t* out,
                    int nthreads);

// Names of the variants this CPU can run, best first.
std::vector<std::string> int8_mm_variants();

}  // namespace llmaccel
