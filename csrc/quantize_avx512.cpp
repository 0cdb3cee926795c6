// quantize_per_token for AVX-512 CPUs: quantize.h's row loop compiled with this unit's
// flags (setup.py, ISA_FLAGS["avx512"]); entered only through pick() where the CPU has every one of them.
#include "quantize.h"

namespace llmaccel {
void quantize_per_token_avx512(int64_t M, int64_t K, const float* x, int64_t x_sm, int8_t* q, int64_t q_sm,
                             float* scale, int nthreads) {
  quantize_rows(M, K, x, x_sm, q, q_sm, scale, nthreads);
}
}  // namespace llmaccel
