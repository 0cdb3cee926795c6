// int8_mm entry point: validation, B layout, variant selection.
#include "int8_mm.h"

#include <omp.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "common.h"
#include "variants.h"

namespace llmaccel {

namespace {

const Variant& pick(const char* op, const std::string& name) { return llmaccel::pick(Family::int8_mm, op, name); }

}  // namespace

std::vector<std::string> int8_mm_variants() { return available_variants(Family::int8_mm); }

void int8_mm(int64_t M, int64_t N, int64_t K, const int8_t* a, int64_t a_sm, int64_t a_sk, const int8_t* b,
             int64_t b_sk, int64_t b_sn, int32_t* c, int64_t c_sm, int64_t c_sn, int nthreads,
             const std::string& variant) {
  const char* op = "int8_mm";
  check_matrix(op, "a", a, M, K, a_sm, a_sk);
  check_matrix(op, "b", b, K, N, b_sk, b_sn);
  check_matrix(op, "out", c, M, N, c_sm, c_sn);
  if (K > kInt8MMMaxK)
    fail(op, "K = " + std::to_string(K) + " exceeds " + std::to_string(kInt8MMMaxK) +
                 ": an exact int8 dot product of that length can overflow int32");
  if (M > 1 && N > 1 && (c_sm == 0 || c_sn == 0)) fail(op, "out has a zero stride, so its elements overlap");
  if (nthreads < 1) fail(op, "nthreads must be >= 1, got " + std::to_string(nthreads));
  const Variant& v = pick(op, variant);
  if (M == 0 || N == 0) return;
  if (K == 0) {
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n) c[m * c_sm + n * c_sn] = 0;
    return;
  }

  // The variants want each column of B contiguous along k.  That is the
  // memory of an nn.Linear weight [N, K] viewed as B = W.t(), the common case,
  // which is used in place.  Any other layout is transposed once into a
  // scratch buffer (N * K bytes; the GEMM costs 2 * M * N * K operations).
  std::vector<int8_t> bt;
  const int8_t* bcols = b;
  int64_t ldb = b_sn;
  if (b_sk != 1 && K > 1) {
    bt.resize(static_cast<size_t>(N) * static_cast<size_t>(K));
    int8_t* dst = bt.data();
#pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int64_t k0 = 0; k0 < K; k0 += 64) {
      const int64_t k1 = std::min(K, k0 + 64);
      // 64-row strips: each pass reads contiguous runs of a row-major B and
      // writes 64-byte runs of each column.
      for (int64_t n = 0; n < N; ++n)
        for (int64_t k = k0; k < k1; ++k) dst[n * K + k] = b[k * b_sk + n * b_sn];
    }
    bcols = bt.data();
    ldb = K;
  }
  Int8MMProblem p{M, N, K, a, a_sm, a_sk, bcols, ldb, false, nullptr, c, c_sm, c_sn, nthreads};
  v.kernels.int8_mm(p);
}

}  // namespace llmaccel
