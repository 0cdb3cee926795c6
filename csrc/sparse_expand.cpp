// sparse_nm_expand / sparse_bitmap_expand (csrc/sparse_expand.h): validation, then one OpenMP pass over rows.
#include "sparse_expand.h"

#include <omp.h>

#include <atomic>
#include <cstring>
#include <string>

#include "common.h"
#include "sparse_nm.h"

namespace llmaccel {
namespace {

inline float value_at(const void* values, bool int8, int64_t i, float scale) {
  return int8 ? float(static_cast<const int8_t*>(values)[i]) * scale : static_cast<const float*>(values)[i];
}

void check_out(const char* op, float* out, int64_t N, int64_t K, int64_t out_sn, int nthreads) {
  check_matrix(op, "out", out, N, K, out_sn, 1);
  if (N > 1 && K > 0 && out_sn < K) fail(op, "out rows overlap (out_sn = " + std::to_string(out_sn) + " < K)");
  if (nthreads < 1) fail(op, "nthreads must be >= 1, got " + std::to_string(nthreads));
}

}  // namespace

void sparse_nm_expand(int64_t N, int64_t K, int64_t n, int64_t m, const void* values, bool values_int8,
                      int64_t values_sn, const uint8_t* idx, int64_t idx_sn, const float* scale, float* out,
                      int64_t out_sn, int nthreads) {
  const char* op = "sparse_nm_expand";
  const auto s = [](int64_t v) { return std::to_string(v); };
  if (N < 0 || K < 0) fail(op, "N and K must be >= 0, got " + s(N) + ", " + s(K));
  if (n < 1 || m > 256 || n >= m) fail(op, "pattern n:m = " + s(n) + ":" + s(m) + " must have 1 <= n < m <= 256");
  if (K >= kMaxElementOffset) fail_overflow(op, "K = " + s(K) + " is beyond any addressable buffer");
  const int bits = sparse_nm_index_bits(m);
  const int64_t groups = ceil_div(K, m), slots = groups * n, idx_bytes = ceil_div(slots * bits, 8);
  if (values_sn < slots) fail(op, "values_sn = " + s(values_sn) + " is less than the " + s(slots) + " slots of a row");
  check_matrix(op, "values", values, N, slots, values_sn, 1);
  if (idx_sn < idx_bytes) fail(op, "indices_sn = " + s(idx_sn) + " is less than the " + s(idx_bytes) + " bytes of a row");
  check_matrix(op, "indices", idx, N, idx_bytes, idx_sn, 1);
  if (values_int8 && N > 0 && !scale) fail(op, "scale is a null pointer (int8 values need per-row scales)");
  if (!values_int8 && scale) fail(op, "scale is given but the values are fp32");
  check_out(op, out, N, K, out_sn, nthreads);
  const unsigned mask = (1u << bits) - 1u;
#pragma omp parallel for num_threads(nthreads) schedule(static)
  for (int64_t r = 0; r < N; ++r) {
    float* o = out + r * out_sn;
    std::memset(o, 0, sizeof(float) * size_t(K));
    const uint8_t* ix = idx + r * idx_sn;
    const float sc = values_int8 ? scale[r] : 1.0f;
    for (int64_t sl = 0; sl < slots; ++sl) {
      const int64_t bit = sl * bits;
      const int64_t col = (sl / n) * m + ((ix[bit >> 3] >> (bit & 7)) & mask);
      // A slot past K is padding; an index >= m (corrupt) may land in the next group but never outside the row.
      if (col < K) o[col] = value_at(values, values_int8, r * values_sn + sl, sc);
    }
  }
}

void sparse_bitmap_expand(int64_t N, int64_t K, const uint8_t* bitmap, int64_t bitmap_sn, const void* values,
                          bool values_int8, int64_t nnz, const int64_t* row_offsets, const float* scale, float* out,
                          int64_t out_sn, int nthreads) {
  const char* op = "sparse_bitmap_expand";
  const auto s = [](int64_t v) { return std::to_string(v); };
  if (N < 0 || K < 0 || nnz < 0) fail(op, "N, K and nnz must be >= 0, got " + s(N) + ", " + s(K) + ", " + s(nnz));
  const int64_t bytes = ceil_div(K, 8);
  if (bitmap_sn < bytes) fail(op, "bitmap_sn = " + s(bitmap_sn) + " is less than the " + s(bytes) + " bytes of a row");
  check_matrix(op, "bitmap", bitmap, N, bytes, bitmap_sn, 1);
  check_matrix(op, "values", values, 1, nnz, 0, 1);
  check_matrix(op, "row_offsets", row_offsets, 1, N + 1, 0, 1);
  if (values_int8 && N > 0 && !scale) fail(op, "scale is a null pointer (int8 values need per-row scales)");
  if (!values_int8 && scale) fail(op, "scale is given but the values are fp32");
  check_out(op, out, N, K, out_sn, nthreads);
  if (row_offsets[0] < 0 || row_offsets[N] > nnz)
    fail(op, "row_offsets must lie in [0, nnz = " + s(nnz) + "], got first " + s(row_offsets[0]) + ", last " +
                 s(row_offsets[N]));
  for (int64_t r = 0; r < N; ++r)
    if (row_offsets[r + 1] < row_offsets[r]) fail(op, "row_offsets must be non-decreasing (row " + s(r) + ")");
  // Per-row popcount check inside the pass (no exception may leave the parallel region): the first bad row is
  // recorded and reported after it; a row never reads past its own span of values.
  std::atomic<int64_t> bad{-1};
#pragma omp parallel for num_threads(nthreads) schedule(static)
  for (int64_t r = 0; r < N; ++r) {
    float* o = out + r * out_sn;
    std::memset(o, 0, sizeof(float) * size_t(K));
    const uint8_t* b = bitmap + r * bitmap_sn;
    int64_t v = row_offsets[r];
    const int64_t end = row_offsets[r + 1];
    const float sc = values_int8 ? scale[r] : 1.0f;
    for (int64_t byte = 0; byte < bytes; ++byte) {
      unsigned bits = b[byte];
      if (byte * 8 + 8 > K) bits &= (1u << (K - byte * 8)) - 1u;  // bits past K are padding (must be 0)
      while (bits) {
        const int t = __builtin_ctz(bits);
        bits &= bits - 1;
        if (v < end) o[byte * 8 + t] = value_at(values, values_int8, v, sc);
        ++v;
      }
    }
    if (v != end) {  // keep the smallest bad row, so the message does not depend on the thread count
      int64_t seen = bad.load();
      while ((seen < 0 || r < seen) && !bad.compare_exchange_weak(seen, r)) {
      }
    }
  }
  if (bad.load() >= 0)
    fail(op, "row " + s(bad.load()) + " of the bitmap has a different number of set bits than its row_offsets span");
}

}  // namespace llmaccel
