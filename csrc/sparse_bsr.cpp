// sparse_bsr_linear entry point: validation (sizes, strides, and the index data itself) and variant selection.
#include "sparse_bsr.h"

#include <algorithm>

#include "common.h"
#include "sparse_args.h"
#include "variants.h"

namespace llmaccel {

namespace {

const char* const kOp = "sparse_bsr_linear";

std::string s(int64_t v) { return std::to_string(v); }

// The tiles: nnzb x bh x bw, strides (values_st, values_sr, 1), index arithmetic inside int64 and any buffer.
void check_tiles(const void* values, int64_t nnzb, int64_t bh, int64_t bw, int64_t st, int64_t sr) {
  if (st < 0 || sr < 0) fail(kOp, "values has a negative stride (values_st = " + s(st) + ", values_sr = " + s(sr) + ")");
  if (nnzb == 0) return;
  if (!values) fail(kOp, "values is a null pointer");
  int64_t a = 0, b = 0, last = 0;
  if (__builtin_mul_overflow(nnzb - 1, st, &a) || __builtin_mul_overflow(bh - 1, sr, &b) ||
      __builtin_add_overflow(a, b, &last) || __builtin_add_overflow(last, bw - 1, &last))
    fail_overflow(kOp, "values: index arithmetic overflows int64");
  check_reach(kOp, "values", last);
}

// crow runs from 0 to nnzb without decreasing, every col lies in [0, T): a corrupt index raises here, so the
// kernels never read outside values or x.  Returns the most tiles one tile row keeps.
int64_t check_indices(const int64_t* crow, const int32_t* col, int64_t R, int64_t T, int64_t nnzb) {
  if (!crow) fail(kOp, "crow_indices is a null pointer");
  if (nnzb > 0 && !col) fail(kOp, "col_indices is a null pointer");
  if (crow[0] != 0) fail(kOp, "crow_indices[0] must be 0, got " + s(crow[0]));
  int64_t most = 0;
  for (int64_t i = 0; i < R; ++i) {
    if (crow[i + 1] < crow[i])
      fail(kOp, "crow_indices must not decrease, but crow_indices[" + s(i + 1) + "] = " + s(crow[i + 1]) +
                    " < crow_indices[" + s(i) + "] = " + s(crow[i]));
    most = std::max(most, crow[i + 1] - crow[i]);
  }
  if (crow[R] != nnzb) fail(kOp, "crow_indices[R] (R = " + s(R) + " tile rows) must be nnzb = " + s(nnzb) +
                                     ", got " + s(crow[R]));
  for (int64_t t = 0; t < nnzb; ++t)
    if (col[t] < 0 || col[t] >= T)
      fail(kOp, "col_indices[" + s(t) + "] = " + s(col[t]) + " is outside [0, " + s(T) + ") (T = ceil(K / bw))");
  return most;
}

}  // namespace

void sparse_bsr_linear(int64_t M, int64_t N, int64_t K, int64_t bh, int64_t bw, int64_t nnzb, const float* x,
                       int64_t x_sm, const void* values, bool values_int8, int64_t values_st, int64_t values_sr,
                       const int64_t* crow, const int32_t* col, const float* scale, const float* bias, float* y,
                       int64_t y_sm, int nthreads, const std::string& variant) {
  if (M < 0) fail(kOp, "M must be >= 0, got " + s(M));
  if (N < 0) fail(kOp, "N must be >= 0, got " + s(N));
  if (K < 0) fail(kOp, "K must be >= 0, got " + s(K));
  // Tiles past 2^16 on a side are no tiles at all; the bound keeps the packing-buffer arithmetic in int64.
  constexpr int64_t kMaxTile = int64_t(1) << 16;
  if (bh < 1 || bh > kMaxTile || bw < 1 || bw > kMaxTile)
    fail(kOp, "block size (bh, bw) = (" + s(bh) + ", " + s(bw) + ") must have 1 <= bh, bw <= " + s(kMaxTile));
  if (N >= kMaxElementOffset || K >= kMaxElementOffset)
    fail_overflow(kOp, "N = " + s(N) + " or K = " + s(K) + " is beyond any addressable buffer");
  if (nnzb < 0) fail(kOp, "nnzb must be >= 0, got " + s(nnzb));
  if (nthreads < 1) fail(kOp, "nthreads must be >= 1, got " + s(nthreads));
  const int64_t R = ceil_div(N, bh), T = ceil_div(K, bw);
  check_matrix(kOp, "x", x, M, K, x_sm, 1);
  check_tiles(values, nnzb, bh, bw, values_st, values_sr);
  check_sparse_scale_bias_y(kOp, M, N, values_int8, scale, bias, y, y_sm, nthreads);
  const int64_t most = check_indices(crow, col, R, T, nnzb);
  // The kernels' scratch, in bytes, must fit in int64: per thread round_up(bh, 8) x most x bw floats (a packed
  // tile row), and x packed by tile column in panels of 6 rows (M rounded up to 8 x (K + bw) floats bounds it).
  int64_t buf = 0, xpack = 0;
  if (__builtin_mul_overflow(round_up(bh, 8) * bw, most, &buf) ||
      __builtin_mul_overflow(buf, int64_t(nthreads) * 4, &buf) ||
      __builtin_mul_overflow(round_up(M, 8), K + bw, &xpack) || __builtin_mul_overflow(xpack, int64_t(4), &xpack))
    fail_overflow(kOp, "the packing buffers (tile rows per thread, packed x) overflow int64");
  const Variant& v = pick(Family::sparse_bsr, kOp, variant);
  if (M == 0 || N == 0) return;
  SparseBSRProblem p{};
  p.M = M, p.N = N, p.K = K, p.bh = bh, p.bw = bw, p.R = R, p.T = T, p.max_row_tiles = most;
  p.x = x, p.x_sm = x_sm;
  if (values_int8)
    p.values_i8 = static_cast<const int8_t*>(values), p.scale = scale;
  else
    p.values = static_cast<const float*>(values);
  p.values_st = values_st, p.values_sr = values_sr, p.crow = crow, p.col = col;
  p.bias = bias, p.y = y, p.y_sm = y_sm, p.nthreads = nthreads;
  v.kernels.sparse_bsr(p);
}

}  // namespace llmaccel
