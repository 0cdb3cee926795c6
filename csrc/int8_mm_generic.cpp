// int8_mm for any x86-64 (or other) CPU: plain C++ the compiler may
// vectorize with the baseline ISA.  Also the reference the faster variants
// are tested against inside the C++ layer.
#include "int8_mm_driver.h"

namespace llmaccel {
inline namespace LLMACCEL_CPU_CAPABILITY {  // see common.h
namespace {

struct Generic {
  static constexpr int MR = 2;
  static constexpr int NR = 4;
  static constexpr int64_t KALIGN = 16;
  static constexpr bool kOnesRow = false;

  template <int R, int C, int kStream>  // kStream: unused, the hardware prefetcher suffices here
  static void tile(const uint8_t* a8, const BCols& B, int64_t K, int32_t* out) {
    const int8_t* a = reinterpret_cast<const int8_t*>(a8);
    for (int r = 0; r < R; ++r) {
      for (int c = 0; c < C; ++c) {
        int32_t s = 0;
        for (int64_t k0 = 0; k0 < K; k0 += KALIGN) {
          const int8_t* ar = a + k0 * MR + r * KALIGN - k0;           // chunk of row r, indexed by k
          const int8_t* bc = B.b + c * B.cs + k0 * B.ks - k0;         // chunk of column c, indexed by k
          const int64_t k1 = std::min<int64_t>(K, k0 + KALIGN);
          for (int64_t k = k0; k < k1; ++k) s += int32_t(ar[k]) * int32_t(bc[k]);
        }
        out[r * C + c] = s;
      }
    }
  }
};

}  // namespace
}  // namespace LLMACCEL_CPU_CAPABILITY

void int8_mm_generic(const Int8MMProblem& p) { run_int8_mm<Generic>(p); }
Int8MMLayout int8_mm_layout_generic() { return {Generic::NR, Generic::KALIGN}; }
}  // namespace llmaccel
