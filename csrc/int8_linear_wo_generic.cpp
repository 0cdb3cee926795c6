// Weight-only int8_linear for any x86-64 CPU (baseline flags).
#include "int8_linear_wo_kernel.h"

namespace llmaccel {
void int8_linear_wo_generic(const Int8LinearWOProblem& p) { run_int8_linear_wo(p); }
}  // namespace llmaccel
