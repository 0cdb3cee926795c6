// Weight-only int8_linear for AVX2 + FMA CPUs (Haswell and later, Zen 1-3):
// the same source as the generic unit, vectorized by the compiler with
// 256-bit registers and fused multiply-adds (setup.py gives *_avx2.cpp
// -mavx2 -mfma); chosen only when CPUID reports both.
#include "int8_linear_wo_kernel.h"

namespace llmaccel {
void int8_linear_wo_avx2(const Int8LinearWOProblem& p) { run_int8_linear_wo(p); }
}  // namespace llmaccel
