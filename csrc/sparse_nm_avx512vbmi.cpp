// sparse_nm_linear for AVX-512 CPUs with VBMI (Ice Lake, Sapphire Rapids, Zen 4); chosen only when CPUID
// reports every feature of the avx512vbmi level.
//
// 2:4 with int8 activations (act_int8): 64 slots (128 columns of x, 32 groups) a step, the x codes of the
// slots gathered by one two-table byte permute and multiplied by VNNI:
//     ctl[s] = 4 * (s / 2) + idx(s)                 s = 0 .. 63, idx(s) the slot's 2-bit field (0 .. 127)
//     g      = vpermt2b(x[128 b .. 128 b + 63], ctl, x[128 b + 64 .. 128 b + 127])      int8 codes
//     acc   += vpdpbusd(g ^ 0x80, q)                 (g + 128) as u8 times q as s8, 4 products a lane
//     wsum  += vpdpbusd(1, q)                        once per weight row, for all x rows
//     dot    = acc - 128 * wsum = sum_s g[s] * q[s]  exact: int32 arithmetic modulo 2^32, and the true
//                                                    |dot| <= 127 * 127 * K / 2 < 2^31 (sparse_nm.h)
// The controls come from the block's 16 index bytes: a qword permute puts the qword holding lane q's 16 bits
// in lane q, vpmultishiftqb extracts each slot's 2 bits into its byte, an AND and an ADD place it.  Per 64
// slots: 3 shuffle-port ops (vpermq, vpmultishiftqb, vpermt2b per x row) and 2 VNNI ops, against the AVX2
// tile's ~21 integer ops per 32 slots (csrc/sparse_nm_avx2.cpp), whose instruction count, not the 0.625 bytes
// per weight, bounded int8 decode.  The columns past the last whole 128-column block run the portable scalar
// loop (sn_scalar_groups_i8), in natural column order like the blocks (no arranged copy of x).
//
// Everything else (fp32 activations, other patterns) runs the avx512 unit's kernels: this level includes
// every feature of that one.
#include <immintrin.h>

#include <cstring>

#include "cpu_features.h"
#include "sparse_nm_kernel.h"

namespace llmaccel {
inline namespace LLMACCEL_CPU_CAPABILITY {
namespace {

// How far ahead the software prefetch asks for the values (bytes) and the index bits (a quarter of that).
constexpr int64_t kSvPrefetchBytes = 4096;

// The 64 gather controls of one 128-column block from its 16 index bytes (slot s at bits 2s .. 2s+1).
inline __m512i sv_controls_2of4(const uint8_t* ix) {
  const __m512i bits = _mm512_permutexvar_epi64(_mm512_setr_epi64(0, 0, 0, 0, 1, 1, 1, 1),
                                                _mm512_castsi128_si512(_mm_loadu_si128(
                                                    reinterpret_cast<const __m128i*>(ix))));
  // Byte j of qword lane q (slot 8q + j): its bits start at 16 * (q % 4) + 2 * j of the lane's qword.
  alignas(64) static constexpr uint8_t kShift[64] = {
      0,  2,  4,  6,  8,  10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30, 32, 34, 36, 38, 40, 42,
      44, 46, 48, 50, 52, 54, 56, 58, 60, 62, 0,  2,  4,  6,  8,  10, 12, 14, 16, 18, 20, 22,
      24, 26, 28, 30, 32, 34, 36, 38, 40, 42, 44, 46, 48, 50, 52, 54, 56, 58, 60, 62};
  alignas(64) static constexpr uint8_t kBase[64] = {
      0,   0,   4,   4,   8,   8,   12,  12,  16,  16,  20,  20,  24,  24,  28,  28,  32,  32,  36,  36,  40,  40,
      44,  44,  48,  48,  52,  52,  56,  56,  60,  60,  64,  64,  68,  68,  72,  72,  76,  76,  80,  80,  84,  84,
      88,  88,  92,  92,  96,  96,  100, 100, 104, 104, 108, 108, 112, 112, 116, 116, 120, 120, 124, 124};
  const __m512i f = _mm512_and_si512(_mm512_multishift_epi64_epi8(_mm512_load_si512(kShift), bits),
                                     _mm512_set1_epi8(3));
  return _mm512_add_epi8(f, _mm512_load_si512(kBase));
}

// The sum of the 16 int32 lanes modulo 2^32.  (_mm512_reduce_add_epi32 ends in a signed scalar add, undefined
// when the biased sum passes 2^31, which it may here: UBSan flags it.)  The lanes are widened to int64 first.
inline uint32_t sv_sum_mod32(__m512i v) {
  const __m512i lo = _mm512_cvtepu32_epi64(_mm512_castsi512_si256(v));
  const __m512i hi = _mm512_cvtepu32_epi64(_mm512_extracti64x4_epi64(v, 1));
  return static_cast<uint32_t>(_mm512_reduce_add_epi64(_mm512_add_epi64(lo, hi)));
}

// Decode walks 4 weight rows in lockstep, a segment apart (sparse_nm_kernel.h, sn_run_lockstep: 1.21x the
// row-after-row walk here, where 4 adjacent rows, sharing pages, ran 0.95x).
constexpr int kSvLockstepRows = 4;

// R x rows times C weight rows row, row + step, .., row + (C - 1) step (C > 1 only at M = 1:
// sn_run_lockstep).  Each (x row, weight row) keeps the one-row arithmetic (its own acc and wsum, blocks in
// order, then the scalar tail), so a result does not depend on which weight rows share a tile; each row's
// prefetch runs kSvPrefetchBytes ahead in its own stream.
template <int R, int C>
struct SvI8Tile2of4 {
  static void run(const SparseNMProblem& p, int64_t row, int64_t m0) { run_step(p, row, m0, 1); }
  static void run_step(const SparseNMProblem& p, int64_t row, int64_t m0, int64_t step) {
    const int8_t* v[C];
    const uint8_t* ix[C];
    for (int c = 0; c < C; ++c)
      v[c] = p.values_i8 + (row + c * step) * p.values_sn, ix[c] = p.idx + (row + c * step) * p.idx_sn;
    const int8_t* xr[R];
    for (int r = 0; r < R; ++r) xr[r] = p.xq + (m0 + r) * p.xq_sm;
    const int64_t nblocks = p.K / 128;
    // No software prefetch on AMD: on a Zen 4 VM (python bench/sparse_decode_ceiling.py --formats 2:4-w8a8,
    // 8 x 4096 x 4096, two runs each way) this tile ran 0.99-1.01x the avx512 unit of the same run with it
    // and 1.07-1.11x without it; the Xeon's tuning (kSvPrefetchBytes) keeps it.
    static const bool prefetch = !cpu_vendor_is_amd();
    const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80)), ones = _mm512_set1_epi8(1);
    __m512i acc[C][R], wsum[C];
    for (int c = 0; c < C; ++c) {
      wsum[c] = _mm512_setzero_si512();
      for (int r = 0; r < R; ++r) acc[c][r] = _mm512_setzero_si512();
    }
    for (int64_t blk = 0; blk < nblocks; ++blk) {
      for (int c = 0; c < C; ++c) {
        if (prefetch) {
          _mm_prefetch(reinterpret_cast<const char*>(v[c] + blk * 64) + kSvPrefetchBytes, _MM_HINT_T0);
          _mm_prefetch(reinterpret_cast<const char*>(ix[c] + blk * 16) + kSvPrefetchBytes / 4, _MM_HINT_T0);
        }
        const __m512i ctl = sv_controls_2of4(ix[c] + blk * 16);
        const __m512i q = _mm512_loadu_si512(v[c] + blk * 64);
        wsum[c] = _mm512_dpbusd_epi32(wsum[c], ones, q);
        for (int r = 0; r < R; ++r) {
          const int8_t* xb = xr[r] + blk * 128;
          const __m512i g = _mm512_permutex2var_epi8(_mm512_loadu_si512(xb), ctl, _mm512_loadu_si512(xb + 64));
          acc[c][r] = _mm512_dpbusd_epi32(acc[c][r], _mm512_xor_si512(g, flip), q);
        }
      }
    }
    for (int c = 0; c < C; ++c) {
      int32_t tail[R] = {};
      sn_scalar_groups_i8<R>(p, row + c * step, m0, nblocks * 32, tail);
      const uint32_t w = sv_sum_mod32(wsum[c]);
      for (int r = 0; r < R; ++r) {
        // Modulo 2^32 (unsigned): the biased sum may pass 2^31 where the true dot cannot.
        const uint32_t biased = sv_sum_mod32(acc[c][r]);
        const int32_t dot = static_cast<int32_t>(biased - 128u * w);
        sparse_store_i8(p, row + c * step, m0 + r, dot + tail[r]);
      }
    }
  }
};

}  // namespace
}  // namespace LLMACCEL_CPU_CAPABILITY

void sparse_nm_avx512vbmi(const SparseNMProblem& p) {
  if (p.act_int8 && p.n == 2 && p.m == 4) {
    sn_run_i8<SvI8Tile2of4, nullptr, kSvLockstepRows>(p);
    return;
  }
  sparse_nm_avx512(p);  // the avx512vbmi level includes every avx512 feature
}
}  // namespace llmaccel
