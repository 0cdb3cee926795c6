// sparse_nm_large_linear for any x86-64 CPU (baseline flags): the body of sparse_nm_large_kernel.h over a
// plain 8-float array (the compiler vectorizes it to SSE2 pairs; no FMA at this level, so each step is
// a rounded multiply then a rounded add).
#include "sparse_nm_large.h"
#include "sparse_nm_large_kernel.h"

namespace llmaccel {
inline namespace LLMACCEL_CPU_CAPABILITY {
namespace {

struct NlVecGeneric {
  struct reg {
    float f[8];
  };
  static constexpr int W = 8;
  static reg zero() { return reg{}; }
  static reg load(const float* q) {
    reg v;
    for (int i = 0; i < 8; ++i) v.f[i] = q[i];
    return v;
  }
  static void store(float* q, const reg& v) {
    for (int i = 0; i < 8; ++i) q[i] = v.f[i];
  }
  static reg set1(float s) {
    reg v;
    for (int i = 0; i < 8; ++i) v.f[i] = s;
    return v;
  }
  static reg fma(const reg& a, const reg& b, const reg& c) {
    reg v;
    for (int i = 0; i < 8; ++i) v.f[i] = a.f[i] * b.f[i] + c.f[i];
    return v;
  }
};

}  // namespace
}  // namespace LLMACCEL_CPU_CAPABILITY

void sparse_nm_large_generic(const SparseNMProblem& p) { nl_run<NlVecGeneric>(p); }
}  // namespace llmaccel
