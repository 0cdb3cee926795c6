// quantize_per_token: symmetric absmax int8 quantization of each row.
//   scale[m] = max_k |x[m][k]| / 127   (1 where that is 0: all-zero or underflowing rows)
//   q[m][k]  = clamp(round_half_even(x[m][k] * 127 / absmax), -127, 127)
#pragma once

#include <cstdint>

#include "common.h"

namespace llmaccel {
inline namespace LLMACCEL_CPU_CAPABILITY {

// Below this absmax, 127 / absmax is not a finite float: such rows are
// quantized with a double division instead of a float reciprocal.
constexpr float kTinyAbsmax = 1e-36f;

}  // namespace LLMACCEL_CPU_CAPABILITY

// Validated entry point (variant picked by variants.h; one generic kernel today).
void quantize_per_token(int64_t M, int64_t K, const float* x, int64_t x_sm, int8_t* q, int64_t q_sm, float* scale,
                        int nthreads);

// The generic kernel (arguments already validated).
void quantize_per_token_generic(int64_t M, int64_t K, const float* x, int64_t x_sm, int8_t* q, int64_t q_sm,
                                float* scale, int nthreads);

}  // namespace llmaccel
