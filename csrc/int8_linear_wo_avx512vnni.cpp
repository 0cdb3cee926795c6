// Weight-only int8_linear for AVX-512 CPUs (the same source as the generic
// unit, vectorized by the compiler with 512-bit registers; VNNI is not used,
// the arithmetic is fp32 FMA).
#include "int8_linear_wo_kernel.h"

namespace llmaccel {
void int8_linear_wo_avx512vnni(const Int8LinearWOProblem& p) { run_int8_linear_wo(p); }
}  // namespace llmaccel
