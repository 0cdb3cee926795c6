// sparse_nm_linear for AVX-512 CPUs (Skylake-SP and later, Zen 4); chosen only
// when CPUID reports every feature of the avx512 level.
//
// 1:2, 2:4 and 4:8 with fp32 activations (the vector path): 16 kept values
// always span 32 columns of x (16 / n groups of m columns), so one two-source
// permute gathers the 16 x values a vector of slots needs from the two
// 16-float windows of those 32 columns:
//     lanes[s] = field(s) + (s / n) * m                      (0 .. 31)
//     xs       = vpermt2ps(x[32j .. 32j+15], lanes, x[32j+16 .. 32j+31])
//     acc      = fma(xs, values, acc)
// where field(s) is slot s's B-bit index (B = 1, 2, 4 for m = 2, 4, 8) from
// the packed index bits (nm_packed.py: slot s at bit B * s of its row).  Per
// 16 kept values: a shift and a mask to decode (once per weight row for all
// x rows of the tile), then one vpermt2ps and one FMA per x row; the AVX2
// unit needs two vpermps, a blend and an FMA per 8.  The columns past the
// last full 64-column block run the portable scalar loop, as on AVX2, with
// the same summation order per lane group (vector lanes, then the tail).  The
// tile is sparse_nm_half_tile.h, shared with the AVX2 unit; this file gives
// it its traits (SnAvx512).
//
// int8 activations (act="dynamic") and other N:M patterns: the AVX2 unit's
// kernels (this level includes every AVX2 feature).
#include <immintrin.h>

#include <cstring>

#include "sparse_nm_half_tile.h"

namespace llmaccel {
inline namespace LLMACCEL_CPU_CAPABILITY {
namespace {

// The vector traits of the half-density tile (sparse_nm_half_tile.h): 16 slots a vector, gathered from the
// 32 columns x[0..15], x[16..31] of their window by one two-source permute.
struct SnAvx512 {
  using T = __m512;
  using I = __m512i;
  static constexpr int W = 16;
  // Decode walks 4 weight rows per tile (sparse_nm_kernel.h, sn_run_lockstep).
  static constexpr int kLockstepRows = 4;
  static constexpr int accs(int R) { return R == 1 ? 4 : 2; }
  static T zero() { return _mm512_setzero_ps(); }
  static T add(T a, T b) { return _mm512_add_ps(a, b); }
  static T fma(T a, T b, T c) { return _mm512_fmadd_ps(a, b, c); }
  static float hsum(T v) { return _mm512_reduce_add_ps(v); }
  static T load_values(const float* v) { return _mm512_loadu_ps(v); }
  static T load_values(const int8_t* v) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(v))));
  }
  // Lane numbers of vector j (slots 16j .. 16j+15 of a 64-column block) in their 32-column window.  The
  // vector's 16 * B index bits start at bit 16 * B * j of the block's index bytes (a whole byte).
  template <int NN, int MM>
  static I lanes(const uint8_t* block_idx, int j) {
    constexpr int B = sn_half_index_bits(MM);
    __m512i dw;
    if constexpr (B == 2) {
      // 2:4: the vector's 32 index bits are one dword, broadcast straight from memory (a load-port
      // vpbroadcastd; the general path below spends a GPR broadcast and a vpermd, both on the shuffle port
      // that vpermt2ps needs).
      int32_t d;
      std::memcpy(&d, block_idx + 4 * j, 4);
      dw = _mm512_set1_epi32(d);
    } else {
    uint64_t q = 0;
    std::memcpy(&q, block_idx + 2 * B * j, 2 * B);  // 16 * B bits
    // Lane s needs dword (B * s) / 32 of q, shifted right by (B * s) % 32.
    const __m512i qv = _mm512_set1_epi64(static_cast<long long>(q));
    dw = _mm512_permutexvar_epi32(
        _mm512_setr_epi32((0 * B) / 32, (1 * B) / 32, (2 * B) / 32, (3 * B) / 32, (4 * B) / 32, (5 * B) / 32,
                          (6 * B) / 32, (7 * B) / 32, (8 * B) / 32, (9 * B) / 32, (10 * B) / 32, (11 * B) / 32,
                          (12 * B) / 32, (13 * B) / 32, (14 * B) / 32, (15 * B) / 32),
        qv);
    }
    const __m512i sh = _mm512_setr_epi32((0 * B) % 32, (1 * B) % 32, (2 * B) % 32, (3 * B) % 32, (4 * B) % 32,
                                         (5 * B) % 32, (6 * B) % 32, (7 * B) % 32, (8 * B) % 32, (9 * B) % 32,
                                         (10 * B) % 32, (11 * B) % 32, (12 * B) % 32, (13 * B) % 32,
                                         (14 * B) % 32, (15 * B) % 32);
    const __m512i f = _mm512_and_si512(_mm512_srlv_epi32(dw, sh), _mm512_set1_epi32((1 << B) - 1));
    return _mm512_add_epi32(
        f, _mm512_setr_epi32((0 / NN) * MM, (1 / NN) * MM, (2 / NN) * MM, (3 / NN) * MM, (4 / NN) * MM,
                             (5 / NN) * MM, (6 / NN) * MM, (7 / NN) * MM, (8 / NN) * MM, (9 / NN) * MM,
                             (10 / NN) * MM, (11 / NN) * MM, (12 / NN) * MM, (13 / NN) * MM, (14 / NN) * MM,
                             (15 / NN) * MM));
  }
  static T gather(const float* xw, I lanes) {
    return _mm512_permutex2var_ps(_mm512_loadu_ps(xw), lanes, _mm512_loadu_ps(xw + 16));
  }
};

}  // namespace
}  // namespace LLMACCEL_CPU_CAPABILITY

void sparse_nm_avx512(const SparseNMProblem& p) {
  if (p.act_int8 || !sn_is_half_pattern(p.n, p.m)) {
    sparse_nm_avx2(p);  // the avx512 level includes every avx2 feature
    return;
  }
  sn_run_half<SnAvx512>(p);
}
}  // namespace llmaccel
