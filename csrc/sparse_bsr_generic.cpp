// sparse_bsr_linear for any x86-64 CPU (baseline flags): the loop nest and micro-kernel of
// sparse_bsr_kernel.h over 4-float plain arrays.  Four floats (not eight) so the 12 accumulators of a
// 6 x 2 micro-tile fit the 16 SSE registers the compiler maps them to; a * b + c rounds twice here.
#include "sparse_bsr_kernel.h"

namespace llmaccel {
inline namespace LLMACCEL_CPU_CAPABILITY {
namespace {

struct Float4 {
  struct reg {
    float v[4];
  };
  static constexpr int W = 4;
  static reg zero() { return reg{}; }
  static reg load(const float* p) {
    reg r;
    for (int i = 0; i < 4; ++i) r.v[i] = p[i];
    return r;
  }
  static void store(float* p, const reg& a) {
    for (int i = 0; i < 4; ++i) p[i] = a.v[i];
  }
  static reg set1(float f) { return reg{{f, f, f, f}}; }
  static reg fma(const reg& a, const reg& b, const reg& c) {
    reg r;
    for (int i = 0; i < 4; ++i) r.v[i] = a.v[i] * b.v[i] + c.v[i];
    return r;
  }
  static reg add(const reg& a, const reg& b) {
    reg r;
    for (int i = 0; i < 4; ++i) r.v[i] = a.v[i] + b.v[i];
    return r;
  }
  static reg mul(const reg& a, const reg& b) {
    reg r;
    for (int i = 0; i < 4; ++i) r.v[i] = a.v[i] * b.v[i];
    return r;
  }
};

}  // namespace
}  // namespace LLMACCEL_CPU_CAPABILITY

void sparse_bsr_generic(const SparseBSRProblem& p) { BsrKernel<Float4>::run(p); }
}  // namespace llmaccel
