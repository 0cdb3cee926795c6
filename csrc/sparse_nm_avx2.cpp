// sparse_nm_linear for AVX2 + FMA CPUs (Haswell and later, Zen 1-3); chosen
// only when CPUID reports them.
//
// 2:4 (the vector path): the kernel streams only the compressed bytes, the
// kept values (fp32, or int8 converted in registers) and the index nibbles, and expands in registers.  Per
// 16 groups (64 columns of x, 32 values, 8 index bytes): each index byte
// holds two groups' 2-bit indices (i0 | i1 << 2 | i2 << 4 | i3 << 6,
// nm_packed.py).  The two bytes of one vector of values (4 groups, 8 slots)
// are broadcast to all lanes, shifted right by 0, 2, .., 14 bits per lane
// (vpsrlvd), masked to 2 bits and offset by 4 for the second group of each
// byte, giving the lane numbers {i0, i1, 4 + i2, 4 + i3} of the slots in
// their 8-float x window; the first half of the vector reads the window
// x[16j .. 16j+7], the second x[16j+8 .. 16j+15]:
//     xs = blend(permutevar8x32(x_lo, lanes), permutevar8x32(x_hi, lanes), 0xF0)
//     acc = fma(xs, values, acc)
// so per 8 kept values: 4 integer ops to decode (once per weight row for all
// x rows of the tile), then 2 vpermps + 1 vblendps + 1 FMA per x row.
// (Measured in cache on Zen 3: ~1.5x faster than decoding each byte
// through a 256-entry lane table in scalar code, and ~3x faster than
// vgatherdps on x.)
// x (a few rows of K floats) stays in L1/L2 while the weight streams by.
// Accumulators: 4 per x row for one row, 2 for two, 1 for three or four
// (enough independent FMA chains without spilling).  The columns past the
// last full 64-column block (and the padded tail group) run the portable
// scalar loop.  Fixed summation order: lane sums, the tail, then the scale
// (int8) and the bias.
//
// 4:8 and 1:2 take the same path (8 slots always span two 8-float windows; 4
// and 1 index bits per slot).  The tile itself is sparse_nm_half_tile.h, shared
// with the AVX-512 unit; this file gives it its traits (SnAvx2).  Other N:M
// patterns run the portable kernel of sparse_nm_kernel.h compiled with this
// unit's flags.
#include <immintrin.h>

#include <cstring>

#include "sparse_nm_half_tile.h"
#include "simd_avx2.h"

namespace llmaccel {
inline namespace LLMACCEL_CPU_CAPABILITY {
namespace {

// How far ahead the int8-activation tile's software prefetch asks for the values (bytes), and for the index
// bits (a quarter of that: they stream at a quarter of the values' rate).
constexpr int64_t kSnI8PrefetchBytes = 4096;

// The vector traits of the half-density tile (sparse_nm_half_tile.h): 8 slots a vector, each vector's
// first 4 slots in the window x[0..7] and the last 4 in x[8..15].
struct SnAvx2 {
  using T = __m256;
  using I = __m256i;
  static constexpr int W = 8;
  // Decode walks one weight row at a time: the lockstep walk (sn_run_lockstep) is measured on AVX-512 only.
  static constexpr int kLockstepRows = 1;
  static constexpr int accs(int R) { return R == 1 ? 4 : R == 2 ? 2 : 1; }
  static T zero() { return _mm256_setzero_ps(); }
  static T add(T a, T b) { return _mm256_add_ps(a, b); }
  static T fma(T a, T b, T c) { return _mm256_fmadd_ps(a, b, c); }
  static float hsum(T v) { return hsum_ps(v); }
  static T load_values(const float* v) { return _mm256_loadu_ps(v); }
  static T load_values(const int8_t* v) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(v))));
  }
  // Lane numbers of vector j's 8 slots in their windows: slot s reads lane field(s) + ((s / NN) * MM) % 8,
  // field(s) = the B bits at bit 8 * B * j + s * B of the block's index bytes (little-endian).
  template <int NN, int MM>
  static I lanes(const uint8_t* block_idx, int j) {
    constexpr int B = sn_half_index_bits(MM);
    const int bitpos = 8 * B * j;
    int32_t d;
    std::memcpy(&d, block_idx + (bitpos / 32) * 4, 4);
    const __m256i sh = _mm256_add_epi32(_mm256_setr_epi32(0, B, 2 * B, 3 * B, 4 * B, 5 * B, 6 * B, 7 * B),
                                        _mm256_set1_epi32(bitpos % 32));
    const __m256i f = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(d), sh), _mm256_set1_epi32((1 << B) - 1));
    return _mm256_or_si256(f, _mm256_setr_epi32(0, (1 / NN) * MM % 8, (2 / NN) * MM % 8, (3 / NN) * MM % 8,
                                                (4 / NN) * MM % 8, (5 / NN) * MM % 8, (6 / NN) * MM % 8,
                                                (7 / NN) * MM % 8));
  }
  static T gather(const float* xw, I lanes) {
    const __m256 lo = _mm256_permutevar8x32_ps(_mm256_loadu_ps(xw), lanes);
    const __m256 hi = _mm256_permutevar8x32_ps(_mm256_loadu_ps(xw + 8), lanes);
    return _mm256_blend_ps(lo, hi, 0xF0);
  }
};

// ---------------------------------------------------------------------------------------------------------
// 2:4 with int8 activations (act_int8): vpmaddubsw on codes gathered by vpshufb, 32 slots (64 columns) a
// vector.  Per 64-column block the 8 index bytes decode to one shuffle control per slot, once per weight row:
//     ctl[s] = 4 * ((s mod 16) / 2 mod 4) + idx[s]        (slot s of group s / 2, its column in a 16-byte lane)
// Lane 0 of the vector (slots 0..15) covers columns 0..31 and lane 1 (slots 16..31) columns 32..63; the
// first 8 slots of each lane read columns 0..15 of the lane's half and the last 8 columns 16..31.  So the
// codes of each x row are laid out per block as [0..15, 32..47 | 16..31, 48..63] (sn_arrange_2of4, once per
// call), and per x row
//     xa, xb = the two 32-byte halves of the arranged block
//     g   = blend32(pshufb(xa, ctl), pshufb(xb, ctl), 0b11001100)      the slot's x code
//     acc += madd16(maddubs(|g|, sign(q, g)), 1)                       int32, exact
// The sign trick makes the u8 operand |g| <= 127 (codes are in [-127, 127]) and keeps each pair sum within
// 2 * 127 * 127 < 2^15 (no saturation); q = -128 has no exact sign(q, g) and is excluded (sparse_nm.h).
// That is ~12 integer ops of decode per block and 9 per x row, against the fp32-activation tile's 4 vpermps,
// 2 blends, 4 FMAs and 2 int8->fp32 conversions per 32 slots of one row: the instruction count, not the
// 0.625 bytes per weight, was what bounded int8 decode.

// The arranged order above for the full 64-column blocks; the columns after them stay in natural order.
void sn_arrange_2of4(const int8_t* q, int64_t K, int8_t* dst) {
  const int64_t full = K / 64 * 64;
  for (int64_t b = 0; b < full; b += 64) {
    std::memcpy(dst + b, q + b, 16);
    std::memcpy(dst + b + 16, q + b + 32, 16);
    std::memcpy(dst + b + 32, q + b + 16, 16);
    std::memcpy(dst + b + 48, q + b + 48, 16);
  }
  std::memcpy(dst + full, q + full, static_cast<size_t>(K - full));
}

// The 32 shuffle controls of one block from its 8 index bytes (two groups per byte, low nibble first; two
// 2-bit fields per group, slot order).
inline __m256i sn_controls_2of4(const uint8_t* ix) {
  uint64_t bytes;
  std::memcpy(&bytes, ix, 8);
  const __m128i v = _mm_cvtsi64_si128(static_cast<long long>(bytes));
  const __m128i low4 = _mm_set1_epi8(0x0F), low2 = _mm_set1_epi8(0x03);
  const __m128i nib = _mm_unpacklo_epi8(_mm_and_si128(v, low4), _mm_and_si128(_mm_srli_epi16(v, 4), low4));
  const __m128i i0 = _mm_and_si128(nib, low2), i1 = _mm_and_si128(_mm_srli_epi16(nib, 2), low2);
  const __m256i idx = _mm256_set_m128i(_mm_unpackhi_epi8(i0, i1), _mm_unpacklo_epi8(i0, i1));
  const __m256i base = _mm256_setr_epi8(0, 0, 4, 4, 8, 8, 12, 12, 0, 0, 4, 4, 8, 8, 12, 12,  //
                                        0, 0, 4, 4, 8, 8, 12, 12, 0, 0, 4, 4, 8, 8, 12, 12);
  return _mm256_add_epi8(idx, base);
}

template <int R, int C>
struct SnI8Tile2of4 {
  static void run(const SparseNMProblem& p, int64_t row, int64_t m0) {
    const int8_t* v = p.values_i8 + row * p.values_sn;
    const uint8_t* ix = p.idx + row * p.idx_sn;
    const int8_t* xr[R];
    for (int r = 0; r < R; ++r) xr[r] = p.xq + (m0 + r) * p.xq_sm;
    const int64_t nblocks = p.K / 64;
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i acc[R];
    for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_si256();
    for (int64_t blk = 0; blk < nblocks; ++blk) {
      _mm_prefetch(reinterpret_cast<const char*>(v + blk * 32) + kSnI8PrefetchBytes, _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(ix + blk * 8) + kSnI8PrefetchBytes / 4, _MM_HINT_T0);
      const __m256i ctl = sn_controls_2of4(ix + blk * 8);
      const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(v + blk * 32));
      for (int r = 0; r < R; ++r) {
        const int8_t* xb = xr[r] + blk * 64;
        const __m256i lo = _mm256_shuffle_epi8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb)), ctl);
        const __m256i hi = _mm256_shuffle_epi8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb + 32)), ctl);
        const __m256i g = _mm256_blend_epi32(lo, hi, 0xCC);
        const __m256i pairs = _mm256_maddubs_epi16(_mm256_abs_epi8(g), _mm256_sign_epi8(q, g));
        acc[r] = _mm256_add_epi32(acc[r], _mm256_madd_epi16(pairs, ones));
      }
    }
    int32_t tail[R] = {};
    sn_scalar_groups_i8<R>(p, row, m0, nblocks * 16, tail);
    for (int r = 0; r < R; ++r) {
      __m128i s = _mm_add_epi32(_mm256_castsi256_si128(acc[r]), _mm256_extracti128_si256(acc[r], 1));
      s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
      s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
      sparse_store_i8(p, row, m0 + r, _mm_cvtsi128_si32(s) + tail[r]);
    }
  }
};

}  // namespace
}  // namespace LLMACCEL_CPU_CAPABILITY

void sparse_nm_avx2(const SparseNMProblem& p) {
  if (p.act_int8) {
    if (p.n == 2 && p.m == 4)
      sn_run_i8<SnI8Tile2of4, &sn_arrange_2of4>(p);
    else
      sn_run_i8<SnScalarI8Tile>(p);
    return;
  }
  if (sn_is_half_pattern(p.n, p.m))
    sn_run_half<SnAvx2>(p);
  else
    sn_run<SnScalarTile>(p);
}
}  // namespace llmaccel
