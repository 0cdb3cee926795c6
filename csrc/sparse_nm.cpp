// The N:M linear entry point (both kernels, sparse_nm.h): validation and variant selection.
#include "sparse_nm.h"

#include "common.h"
#include "sparse_args.h"
#include "variants.h"

namespace llmaccel {

namespace {

// Checks every argument of an N:M linear call and returns the problem (act_int8 false).
SparseNMProblem nm_problem(const char* op, int64_t M, int64_t N, int64_t K, int64_t n, int64_t m, const float* x,
                           int64_t x_sm, const void* values, bool values_int8, int64_t values_sn,
                           const uint8_t* idx, int64_t idx_sn, const float* scale, const float* bias, float* y,
                           int64_t y_sm, int nthreads) {
  const auto s = [](int64_t v) { return std::to_string(v); };
  if (M < 0) fail(op, "M must be >= 0, got " + s(M));
  if (N < 0) fail(op, "N must be >= 0, got " + s(N));
  if (K < 0) fail(op, "K must be >= 0, got " + s(K));
  if (n < 1 || m > 256 || n >= m)
    fail(op, "pattern n:m = " + s(n) + ":" + s(m) + " must have 1 <= n < m <= 256");
  if (K >= kMaxElementOffset) fail_overflow(op, "K = " + s(K) + " is beyond any addressable buffer");
  const int bits = sparse_nm_index_bits(m);
  const int64_t groups = ceil_div(K, m);
  const int64_t slots = groups * n;  // per row; <= K * n / m + n, no overflow for any valid K
  const int64_t idx_bytes = ceil_div(slots * bits, 8);
  check_matrix(op, "x", x, M, K, x_sm, 1);
  if (values_sn < slots)
    fail(op, "values_sn (the row stride of values) = " + s(values_sn) + " is less than the " + s(slots) +
                 " slots of a row (ceil(K / m) * n with K = " + s(K) + ", pattern " + s(n) + ":" + s(m) + ")");
  check_matrix(op, "values", values, N, slots, values_sn, 1);
  if (idx_sn < idx_bytes)
    fail(op, "indices_sn (the row stride of the packed indices, bytes) = " + s(idx_sn) + " is less than the " +
                 s(idx_bytes) + " bytes of a row (" + s(slots) + " slots of " + std::to_string(bits) + " bits)");
  check_matrix(op, "indices", idx, N, idx_bytes, idx_sn, 1);
  check_sparse_scale_bias_y(op, M, N, values_int8, scale, bias, y, y_sm, nthreads);
  SparseNMProblem p{};
  p.M = M, p.N = N, p.K = K, p.n = static_cast<int>(n), p.m = static_cast<int>(m), p.bits = bits, p.groups = groups;
  p.x = x, p.x_sm = x_sm;
  if (values_int8)
    p.values_i8 = static_cast<const int8_t*>(values), p.scale = scale;
  else
    p.values = static_cast<const float*>(values);
  p.values_sn = values_sn, p.idx = idx, p.idx_sn = idx_sn, p.bias = bias, p.y = y, p.y_sm = y_sm;
  p.nthreads = nthreads;
  return p;
}

}  // namespace

void sparse_nm_linear(SparseNMKernel kernel, int64_t M, int64_t N, int64_t K, int64_t n, int64_t m, const float* x,
                      int64_t x_sm, const void* values, bool values_int8, int64_t values_sn, const uint8_t* idx,
                      int64_t idx_sn, const float* scale, const float* bias, float* y, int64_t y_sm, int nthreads,
                      const std::string& variant) {
  const bool large = kernel == SparseNMKernel::large_m;
  const char* op = large ? "sparse_nm_large_linear" : "sparse_nm_linear";
  const SparseNMProblem p = nm_problem(op, M, N, K, n, m, x, x_sm, values, values_int8, values_sn, idx, idx_sn,
                                       scale, bias, y, y_sm, nthreads);
  const Variant& v = pick(large ? Family::sparse_nm_large : Family::sparse_nm, op, variant);
  if (M == 0 || N == 0) return;
  (large ? v.kernels.sparse_nm_large : v.kernels.sparse_nm)(p);
}

void sparse_nm_i8_linear(int64_t M, int64_t N, int64_t K, int64_t n, int64_t m, const float* x, int64_t x_sm,
                         const int8_t* values, int64_t values_sn, const uint8_t* idx, int64_t idx_sn,
                         const float* scale, const float* bias, float* y, int64_t y_sm, int nthreads,
                         const std::string& variant) {
  const char* op = "sparse_nm_i8_linear";
  if (K > kSparseI8MaxK)
    fail(op, "K = " + std::to_string(K) + " is above " + std::to_string(kSparseI8MaxK) +
                 ": the int32 sum of 127 * 127 * K could overflow");
  SparseNMProblem p = nm_problem(op, M, N, K, n, m, x, x_sm, values, true, values_sn, idx, idx_sn, scale, bias, y,
                                 y_sm, nthreads);
  p.act_int8 = true;
  const Variant& v = pick(Family::sparse_nm, op, variant);
  if (M == 0 || N == 0) return;
  v.kernels.sparse_nm(p);
}

}  // namespace llmaccel
