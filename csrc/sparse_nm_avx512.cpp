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
// the same summation order per lane group (vector lanes, then the tail).
//
// int8 activations (act="dynamic") and other N:M patterns: the AVX2 unit's
// kernels (this level includes every AVX2 feature).
#include <immintrin.h>

#include <cstring>

#include "sparse_nm_kernel.h"

namespace llmaccel {
inline namespace LLMACCEL_CPU_CAPABILITY {
namespace {

// Values ahead of the current position that the software prefetch asks for (2 KiB of fp32).
constexpr int64_t kSn512PrefetchFloats = 512;

template <int NN, int MM>
struct HalfPattern512 {
  static_assert(2 * NN == MM && (MM == 2 || MM == 4 || MM == 8), "1:2, 2:4 or 4:8");
  static constexpr int B = MM == 2 ? 1 : MM == 4 ? 2 : 4;  // index bits

  // Lane numbers of vector j (slots 16j .. 16j+15 of a 64-column block) in their 32-column window.  The
  // vector's 16 * B index bits start at bit 16 * B * j of the block's index bytes (a whole byte).
  static __m512i lanes(const uint8_t* block_idx, int j) {
    uint64_t q = 0;
    std::memcpy(&q, block_idx + 2 * B * j, 2 * B);  // 16 * B bits
    // Lane s needs dword (B * s) / 32 of q, shifted right by (B * s) % 32.
    const __m512i qv = _mm512_set1_epi64(static_cast<long long>(q));
    const __m512i dw = _mm512_permutexvar_epi32(
        _mm512_setr_epi32((0 * B) / 32, (1 * B) / 32, (2 * B) / 32, (3 * B) / 32, (4 * B) / 32, (5 * B) / 32,
                          (6 * B) / 32, (7 * B) / 32, (8 * B) / 32, (9 * B) / 32, (10 * B) / 32, (11 * B) / 32,
                          (12 * B) / 32, (13 * B) / 32, (14 * B) / 32, (15 * B) / 32),
        qv);
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
};

// 16 kept values as floats: fp32 loaded, int8 sign-extended and converted.
inline __m512 load_values16(const float* v) { return _mm512_loadu_ps(v); }
inline __m512 load_values16(const int8_t* v) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(v))));
}

template <class P>
struct SnHalf512 {
  template <int R, int C>
  struct Tile {
    static constexpr int A = R == 1 ? 4 : 2;  // accumulators per x row

    template <class T>
    static void run_t(const SparseNMProblem& p, int64_t row, int64_t m0) {
      const T* v = sn_values<T>(p, row);
      const uint8_t* ix = p.idx + row * p.idx_sn;
      const float* xr[R];
      for (int r = 0; r < R; ++r) xr[r] = p.x + (m0 + r) * p.x_sm;
      const int64_t nblocks = p.K / 64;  // 64-column blocks: whole groups, every column < K
      __m512 acc[R][A];
      for (int r = 0; r < R; ++r)
        for (int a = 0; a < A; ++a) acc[r][a] = _mm512_setzero_ps();
      for (int64_t blk = 0; blk < nblocks; ++blk) {
        const T* vb = v + blk * 32;
        _mm_prefetch(reinterpret_cast<const char*>(vb + kSn512PrefetchFloats), _MM_HINT_T0);
        if constexpr (sizeof(T) == 4)
          _mm_prefetch(reinterpret_cast<const char*>(vb + kSn512PrefetchFloats + 16), _MM_HINT_T0);
        const uint8_t* bidx = ix + blk * 4 * P::B;
        for (int j = 0; j < 2; ++j) {
          const __m512i lanes = P::lanes(bidx, j);
          const __m512 vals = load_values16(vb + 16 * j);
          const int a = A == 4 ? static_cast<int>((blk & 1) * 2 + j) : j;
          for (int r = 0; r < R; ++r) {
            const float* xw = xr[r] + blk * 64 + 32 * j;
            const __m512 xs = _mm512_permutex2var_ps(_mm512_loadu_ps(xw), lanes, _mm512_loadu_ps(xw + 16));
            acc[r][a] = _mm512_fmadd_ps(xs, vals, acc[r][a]);
          }
        }
      }
      float tail[R][4] = {};
      sn_scalar_groups<T, R>(p, row, m0, nblocks * (64 / p.m), tail);
      for (int r = 0; r < R; ++r) {
        __m512 s = acc[r][0];
        for (int a = 1; a < A; ++a) s = _mm512_add_ps(s, acc[r][a]);
        sparse_store(p, row, m0 + r, _mm512_reduce_add_ps(s) + sparse_sum4<R>(tail, r));
      }
    }
    static void run(const SparseNMProblem& p, int64_t row, int64_t m0) {
      if (p.values_i8)
        run_t<int8_t>(p, row, m0);
      else
        run_t<float>(p, row, m0);
    }
  };
};

}  // namespace
}  // namespace LLMACCEL_CPU_CAPABILITY

void sparse_nm_avx512(const SparseNMProblem& p) {
  if (p.act_int8 || !((p.n == 2 && p.m == 4) || (p.n == 4 && p.m == 8) || (p.n == 1 && p.m == 2))) {
    sparse_nm_avx2(p);  // the avx512 level includes every avx2 feature
    return;
  }
  if (p.n == 2 && p.m == 4)
    sn_run<SnHalf512<HalfPattern512<2, 4>>::Tile>(p);
  else if (p.n == 4 && p.m == 8)
    sn_run<SnHalf512<HalfPattern512<4, 8>>::Tile>(p);
  else
    sn_run<SnHalf512<HalfPattern512<1, 2>>::Tile>(p);
}
}  // namespace llmaccel
