// sparse_nm_linear for AVX2 + FMA CPUs (Haswell and later, Zen 1-3); chosen
// only when CPUID reports them.
//
// 2:4 (the vector path): the kernel streams only the compressed bytes, the
// kept values (fp32) and the index nibbles, and expands in registers.  Per
// 16 groups (64 columns of x, 32 values, 8 index bytes read as one word):
// each index byte holds two groups' 2-bit indices (i0 | i1 << 2 | i2 << 4 |
// i3 << 6, nm_packed.py) and a 256-entry table turns it into four lane
// numbers {i0, i1, 4 + i2, 4 + i3} of an 8-float x window; two bytes give
// the eight lane numbers of one vector of values (4 groups), whose first
// half reads the window x[16j .. 16j+7] and second half x[16j+8 .. 16j+15]:
//     xs = blend(permutevar8x32(x_lo, lanes), permutevar8x32(x_hi, lanes), 0xF0)
//     acc = fma(xs, values, acc)
// so per 8 kept values: 2 vpermps + 1 vblendps + 1 FMA per x row, and the
// lane numbers are decoded once per weight row for all x rows of the tile.
// x (a few rows of K floats) stays in L1/L2 while the weight streams by.
// Accumulators: 4 per x row for one row, 2 for two, 1 for three or four
// (enough independent FMA chains without spilling).  The columns past the
// last full 64-column block (and the padded tail group) run the portable
// scalar loop.  Fixed summation order: lane sums, the tail, then the bias.
//
// Other N:M patterns run the portable kernel of sparse_nm_kernel.h compiled
// with this unit's flags.
#include <immintrin.h>

#include <array>
#include <cstring>

#include "sparse_nm_kernel.h"

namespace llmaccel {
inline namespace LLMACCEL_CPU_CAPABILITY {
namespace {

// Bytes of values ahead of the current position that the software prefetch asks for.
constexpr int64_t kSnPrefetchFloats = 256;

// Index byte of two 2:4 groups -> the lane numbers of their four slots in an 8-float window, one per byte.
constexpr std::array<uint32_t, 256> make_lane_table() {
  std::array<uint32_t, 256> t{};
  for (uint32_t b = 0; b < 256; ++b) {
    const uint32_t i0 = b & 3, i1 = (b >> 2) & 3, i2 = (b >> 4) & 3, i3 = (b >> 6) & 3;
    t[b] = i0 | (i1 << 8) | ((4 + i2) << 16) | ((4 + i3) << 24);
  }
  return t;
}
constexpr std::array<uint32_t, 256> kLanes = make_lane_table();

inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Lane numbers of the 8 slots (4 groups) held by index bytes b0 (first two groups) and b1.
inline __m256i lanes_of(uint32_t b0, uint32_t b1) {
  const uint64_t w = uint64_t(kLanes[b0]) | (uint64_t(kLanes[b1]) << 32);
  return _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(static_cast<long long>(w)));
}

template <int R, int C>
struct Sn24Tile {
  static constexpr int A = R == 1 ? 4 : R == 2 ? 2 : 1;  // accumulators per x row

  static void run(const SparseNMProblem& p, int64_t row, int64_t m0) {
    const float* v = p.values + row * p.values_sn;
    const uint8_t* ix = p.idx + row * p.idx_sn;
    const float* xr[R];
    for (int r = 0; r < R; ++r) xr[r] = p.x + (m0 + r) * p.x_sm;
    const int64_t nblocks = p.K / 64;  // 64-column blocks: 16 whole groups, every column < K
    __m256 acc[R][A];
    for (int r = 0; r < R; ++r)
      for (int a = 0; a < A; ++a) acc[r][a] = _mm256_setzero_ps();
    for (int64_t blk = 0; blk < nblocks; ++blk) {
      const float* vb = v + blk * 32;
      _mm_prefetch(reinterpret_cast<const char*>(vb + kSnPrefetchFloats), _MM_HINT_T0);
      uint64_t word;
      std::memcpy(&word, ix + blk * 8, 8);
      for (int j = 0; j < 4; ++j) {
        const __m256i lanes = lanes_of(static_cast<uint32_t>(word >> (16 * j)) & 0xFF,
                                       static_cast<uint32_t>(word >> (16 * j + 8)) & 0xFF);
        const __m256 vals = _mm256_loadu_ps(vb + 8 * j);
        for (int r = 0; r < R; ++r) {
          const float* xw = xr[r] + blk * 64 + 16 * j;
          const __m256 lo = _mm256_permutevar8x32_ps(_mm256_loadu_ps(xw), lanes);
          const __m256 hi = _mm256_permutevar8x32_ps(_mm256_loadu_ps(xw + 8), lanes);
          acc[r][j % A] = _mm256_fmadd_ps(_mm256_blend_ps(lo, hi, 0xF0), vals, acc[r][j % A]);
        }
      }
    }
    float tail[R][4] = {};
    sn_scalar_groups<R>(p, row, m0, nblocks * 16, tail);
    const float bias = p.bias ? p.bias[row] : 0.0f;
    for (int r = 0; r < R; ++r) {
      __m256 s = acc[r][0];
      for (int a = 1; a < A; ++a) s = _mm256_add_ps(s, acc[r][a]);
      p.y[(m0 + r) * p.y_sm + row] = (hsum8(s) + sn_sum4<R>(tail, r)) + bias;
    }
  }
};

}  // namespace
}  // namespace LLMACCEL_CPU_CAPABILITY

void sparse_nm_avx2(const SparseNMProblem& p) {
  if (p.n == 2 && p.m == 4)
    sn_run<Sn24Tile>(p);
  else
    sn_run<SnScalarTile>(p);
}
}  // namespace llmaccel
