// sparse_bitmap_linear entry point: validation and variant selection.
#include "sparse_bitmap.h"

#include "common.h"
#include "sparse_args.h"
#include "variants.h"

namespace llmaccel {

namespace {

// row_offsets must be non-decreasing and inside [0, nnz]: then every row's values lie inside the buffer,
// and a row whose bit count matches its offsets (checked by the kernels) reads only its own values.  O(N).
void check_row_offsets(const char* op, const int64_t* off, int64_t N, int64_t nnz) {
  const auto s = [](int64_t v) { return std::to_string(v); };
  if (off[0] < 0) fail(op, "row_offsets[0] = " + s(off[0]) + " is negative");
  for (int64_t r = 0; r < N; ++r)
    if (off[r + 1] < off[r])
      fail(op, "row_offsets must be non-decreasing: row_offsets[" + s(r + 1) + "] = " + s(off[r + 1]) +
                   " < row_offsets[" + s(r) + "] = " + s(off[r]));
  if (off[N] > nnz)
    fail(op, "row_offsets[N] = " + s(off[N]) + " is past the end of values (nnz = " + s(nnz) + ")");
}

// The checks both entries share (everything but the bitmap / the column indices).
void check_common(const char* op, int64_t M, int64_t N, int64_t K, const float* x, int64_t x_sm, const void* values,
                  bool values_int8, int64_t nnz, const int64_t* row_offsets, const float* scale, const float* bias,
                  const float* y, int64_t y_sm, int nthreads) {
  const auto s = [](int64_t v) { return std::to_string(v); };
  if (M < 0) fail(op, "M must be >= 0, got " + s(M));
  if (N < 0) fail(op, "N must be >= 0, got " + s(N));
  if (K < 0) fail(op, "K must be >= 0, got " + s(K));
  if (nnz < 0) fail(op, "nnz must be >= 0, got " + s(nnz));
  if (K >= kMaxElementOffset) fail_overflow(op, "K = " + s(K) + " is beyond any addressable buffer");
  check_matrix(op, "x", x, M, K, x_sm, 1);
  check_matrix(op, "values", values, 1, nnz, 0, 1);
  if (!row_offsets) fail(op, "row_offsets is a null pointer");
  check_matrix(op, "row_offsets", row_offsets, 1, N + 1, 0, 1);
  check_sparse_scale_bias_y(op, M, N, values_int8, scale, bias, y, y_sm, nthreads);
}

SparseBitmapProblem make_problem(int64_t M, int64_t N, int64_t K, const float* x, int64_t x_sm, const void* values,
                                 bool values_int8, int64_t nnz, const int64_t* row_offsets, const float* scale,
                                 const float* bias, float* y, int64_t y_sm, int nthreads) {
  SparseBitmapProblem p{};
  p.M = M, p.N = N, p.K = K, p.x = x, p.x_sm = x_sm;
  if (values_int8)
    p.values_i8 = static_cast<const int8_t*>(values), p.scale = scale;
  else
    p.values = static_cast<const float*>(values);
  p.nnz = nnz, p.row_offsets = row_offsets;
  p.bias = bias, p.y = y, p.y_sm = y_sm, p.nthreads = nthreads;
  return p;
}

}  // namespace

void sparse_bitmap_index_linear(int64_t M, int64_t N, int64_t K, const float* x, int64_t x_sm, const void* values,
                                bool values_int8, int64_t nnz, const uint16_t* cols, const int64_t* row_offsets,
                                const float* scale, const float* bias, float* y, int64_t y_sm, int nthreads,
                                const std::string& variant) {
  const char* op = "sparse_bitmap_index_linear";
  check_common(op, M, N, K, x, x_sm, values, values_int8, nnz, row_offsets, scale, bias, y, y_sm, nthreads);
  if (K > kSparseIndexMaxK)
    fail(op, "K = " + std::to_string(K) + " is above " + std::to_string(kSparseIndexMaxK) +
                 " (16-bit column indices)");
  if (K == 0 && M > 0 && N > 0 && nnz > 0) fail(op, "K = 0 with kept values");
  check_matrix(op, "cols", cols, 1, nnz, 0, 1);
  const Variant& v = pick(Family::sparse_bitmap, op, variant);
  check_row_offsets(op, row_offsets, N, nnz);
  if (M == 0 || N == 0) return;
  SparseBitmapProblem p = make_problem(M, N, K, x, x_sm, values, values_int8, nnz, row_offsets, scale, bias, y, y_sm,
                                       nthreads);
  p.by_index = true, p.cols = cols;
  v.kernels.sparse_bitmap(p);
}

void sparse_bitmap_linear(int64_t M, int64_t N, int64_t K, const float* x, int64_t x_sm, const void* values,
                          bool values_int8, int64_t nnz, const uint8_t* bitmap, int64_t bitmap_sn,
                          const int64_t* row_offsets, const float* scale, const float* bias, float* y,
                          int64_t y_sm, int nthreads, const std::string& variant) {
  const char* op = "sparse_bitmap_linear";
  const auto s = [](int64_t v) { return std::to_string(v); };
  check_common(op, M, N, K, x, x_sm, values, values_int8, nnz, row_offsets, scale, bias, y, y_sm, nthreads);
  const int64_t kbytes = ceil_div(K, 8);
  if (bitmap_sn < kbytes)
    fail(op, "bitmap_sn (the row stride of the bitmap, bytes) = " + s(bitmap_sn) + " is less than the " +
                 s(kbytes) + " bytes of a row (ceil(K / 8) with K = " + s(K) + ")");
  check_matrix(op, "bitmap", bitmap, N, kbytes, bitmap_sn, 1);
  const Variant& v = pick(Family::sparse_bitmap, op, variant);
  check_row_offsets(op, row_offsets, N, nnz);
  if (M == 0 || N == 0) return;
  SparseBitmapProblem p = make_problem(M, N, K, x, x_sm, values, values_int8, nnz, row_offsets, scale, bias, y, y_sm,
                                       nthreads);
  p.bitmap = bitmap, p.bitmap_sn = bitmap_sn;
  const int64_t bad = v.kernels.sparse_bitmap(p);
  if (bad >= 0)
    fail(op, "bitmap and row_offsets disagree at row " + s(bad) + ": row_offsets[" + s(bad + 1) + "] - row_offsets[" +
                 s(bad) + "] = " + s(row_offsets[bad + 1] - row_offsets[bad]) +
                 " kept values, but the row's bitmap sets a different number of bits, or bits past column K = " +
                 s(K) + " (a corrupt weight)");
}

}  // namespace llmaccel
