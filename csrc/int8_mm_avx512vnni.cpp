// int8_mm for CPUs with AVX-512 VNNI (Cascade Lake and later, Zen 4 and later).
// Built with -mavx512f -mavx512bw -mavx512vl -mavx512vnni; only called when
// CPUID reports those features.
//
// Two tiles.  Packed weights (int8_linear) and plain ones from 64 rows run
// the outer-product tile (Avx512Outer below, int8_mm_outer.h); plain columns
// at fewer rows the dot-product tile, whose inner step (64 k values) is: R loads of packed A (u8 = a + 128, the R rows'
// 64-byte chunks adjacent in memory), C loads of
// B columns, R*C vpdpbusd, each adding 16 lanes of 4-byte dot products into
// an int32 accumulator.  4 x 6 tiles use 24 accumulators + 6 B + 1 A = 31 of
// the 32 zmm registers.  The K tail is one masked B load per column (bytes
// past K read as zero, so A's padding never contributes).
#include <immintrin.h>

#include "int8_mm_driver.h"
#include "reduce_avx512.h"
#include "int8_mm_outer_vnni.h"
#include "vec_f32.h"

namespace llmaccel {
inline namespace LLMACCEL_CPU_CAPABILITY {  // see common.h
namespace {

// acc += dot4(a as u8, b as s8) per 32-bit lane.  Written as inline asm with
// the accumulator tied in place ("+v"): with the intrinsic, GCC 12 copies
// every accumulator through a scratch register (and spills half of them)
// around each vpdpbusd, which halved the kernel's throughput.
inline __attribute__((always_inline)) void dpbusd(__m512i& acc, __m512i a, __m512i b) {
  asm("vpdpbusd %[b], %[a], %[acc]" : [acc] "+v"(acc) : [a] "v"(a), [b] "v"(b));
}

struct Avx512Vnni {
  static constexpr int MR = 4;
  static constexpr int NR = 6;
  static constexpr int64_t KALIGN = 64;
  static constexpr bool kOnesRow = true;

  // One k-step of 64 bytes; `mask` selects the valid bytes of B (all ones
  // except in the K tail).  Every loop has a compile-time trip count and is
  // fully unrolled so the accumulators live in registers.
  // Prefetch distance along a plain B column when streaming it from memory.
  // M=1 decode over 8 rotating 4096^2 weights vs torch._int_mm, 4 runs each:
  // 512 B -> 0.96-1.02x, 1024 B -> 0.91-0.97x, 2048 B -> 0.92-0.93x (prefill
  // and M=64 unchanged: compute-bound).
  static constexpr int64_t kPrefetchBytes = 512;

  template <int R, int C, bool kMasked, int kStream>
  static inline __attribute__((always_inline)) void step(__m512i* acc, const uint8_t* a, const BCols& B,
                                                         int64_t k, __mmask64 mask) {
    const int8_t* b = B.b + k * B.ks;
    __m512i bv[C];
    if constexpr (kStream == kStreamColumns) {
#pragma GCC unroll 8
      for (int c = 0; c < C; ++c) {
        // Near: this column, a little ahead, into L1.  Far: the same bytes
        // of the next group's column, into L2, so the next tile starts on
        // warm lines (a column of an nn.Linear weight is a one-page stream,
        // too short for the hardware prefetcher to ramp up on).
        _mm_prefetch(reinterpret_cast<const char*>(b + c * B.cs + kPrefetchBytes * B.ks), _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(b + c * B.cs + B.next), _MM_HINT_T1);
      }
    }
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c)
      bv[c] = kMasked ? _mm512_maskz_loadu_epi8(mask, b + c * B.cs) : _mm512_loadu_si512(b + c * B.cs);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512i av = _mm512_load_si512(a + k * MR + r * 64);
#pragma GCC unroll 8
      for (int c = 0; c < C; ++c) dpbusd(acc[r * C + c], av, bv[c]);
    }
  }

  template <int R, int C, int kStream>
  static void tile(const uint8_t* a, const BCols& b, int64_t K, int32_t* out) {
    __m512i acc[R * C];
#pragma GCC unroll 32
    for (int i = 0; i < R * C; ++i) acc[i] = _mm512_setzero_si512();
    const int64_t kfull = K & ~int64_t(63);
    for (int64_t k = 0; k < kfull; k += 64) step<R, C, false, kStream>(acc, a, b, k, 0);
    if (kfull < K) step<R, C, true, kReuse>(acc, a, b, kfull, _cvtu64_mask64(~0ull >> (64 - (K - kfull))));
    constexpr int kQuads = R * C / 4;
#pragma GCC unroll 8
    for (int q = 0; q < kQuads; ++q)
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 4 * q),
                       reduce4(acc[4 * q], acc[4 * q + 1], acc[4 * q + 2], acc[4 * q + 3]));
    // The rest through reduce4 too, not _mm512_reduce_add_epi32: GCC implements that with signed int
    // additions (undefined on overflow, flagged by UBSan at K = 131071), and these sums wrap by design.
#pragma GCC unroll 4
    for (int i = 4 * kQuads; i < R * C; ++i) {
      const __m512i z = _mm512_setzero_si512();
      out[i] = _mm_cvtsi128_si32(reduce4(acc[i], z, z, z));
    }
  }
};

// The outer-product tile (int8_mm_outer_vnni.h) on zmm: 8 rows x 32 columns, one int32 lane per output,
// 16 accumulators + 2 B + 1 broadcast of the 32 zmm registers.  Why not the dot-product tile above for
// these: at MiniLM's K = 384 a dot-product tile runs only 6 k-steps, then reduces its 24 accumulators
// across lanes and scatters its outputs (and its fused activation ran in the scalar epilogue); on the
// 2-core SPR VM (4096 x 384 -> 1536 with GELU, same process, 1 thread) it took 62-64 ms, this 24 ms.
struct Avx512OuterV {
  using I = __m512i;
  static constexpr int MR = 8;
  static constexpr int kBytes = 64;
  static constexpr int NR = 32;
  static I zero() { return _mm512_setzero_si512(); }
  static I load(const void* p) { return _mm512_loadu_si512(p); }
  static I set1(int32_t v) { return _mm512_set1_epi32(v); }
  static I sub(I a, I b) { return _mm512_sub_epi32(a, b); }
  static I slli7(I a) { return _mm512_slli_epi32(a, 7); }
  static inline __attribute__((always_inline)) void dpbusd(I& acc, I u, I s) { llmaccel::dpbusd(acc, u, s); }
  static void prefetch_panel(const int8_t* p) {
    _mm_prefetch(reinterpret_cast<const char*>(p + kPanelPrefetchBytes), _MM_HINT_T1);
    _mm_prefetch(reinterpret_cast<const char*>(p + kPanelPrefetchBytes + 64), _MM_HINT_T1);
  }

  // Packed panels stream from DRAM at decode: the hardware prefetcher follows the single sequential
  // stream, and an L2 prefetch of both lines of a 128-byte step 1.5 KiB ahead keeps enough misses in
  // flight.  (Measured with the dot-product tile, which read packed panels before this one: at M = 1 on
  // 8 x 16 MB packed weights, 0.90-0.93 of a plain read of the same bytes on 2 threads; 0.72-0.83 with no
  // software prefetch.)
  static constexpr int64_t kPanelPrefetchBytes = 1536;

  // Inlined with its row loop unrolled (an accumulator indexed by a run-time row would put every
  // accumulator on the stack, as int8_mm_ymm.h notes).  Columns past o.cols are masked off.
  template <int R>
  static inline __attribute__((always_inline)) void store(const __m512i* acc, const OuterOut& o) {
    const __mmask16 m0 = lanes_below(o.cols), m1 = lanes_below(o.cols - 16);
    if (!o.y) {
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        int32_t* crow = o.c + r * o.c_sm;
        if (o.c_sn == 1) {
          _mm512_mask_storeu_epi32(crow, m0, acc[2 * r]);
          _mm512_mask_storeu_epi32(crow + 16, m1, acc[2 * r + 1]);
        } else {
          alignas(64) int32_t v[NR];
          _mm512_store_si512(v, acc[2 * r]);
          _mm512_store_si512(v + 16, acc[2 * r + 1]);
          for (int c = 0; c < o.cols; ++c) crow[c * o.c_sn] = v[c];
        }
      }
      return;
    }
    const __m512 ws0 = _mm512_maskz_loadu_ps(m0, o.ws), ws1 = _mm512_maskz_loadu_ps(m1, o.ws + 16);
    const __m512 b0 = o.bias ? _mm512_maskz_loadu_ps(m0, o.bias) : _mm512_setzero_ps();
    const __m512 b1 = o.bias ? _mm512_maskz_loadu_ps(m1, o.bias + 16) : _mm512_setzero_ps();
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      // tile_entry's scalar epilogue: fma(float(acc) * xs, ws, bias), then the activation.
      const __m512 xs = _mm512_set1_ps(o.xs[r]);
      __m512 y0 = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(acc[2 * r]), xs), ws0, b0);
      __m512 y1 = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(acc[2 * r + 1]), xs), ws1, b1);
      switch (o.act) {  // per tile, not per element
        case llmaccel::kActGelu: y0 = gelu_v<VecF32x16>(y0), y1 = gelu_v<VecF32x16>(y1); break;
        case llmaccel::kActGeluTanh: y0 = gelu_tanh_v<VecF32x16>(y0), y1 = gelu_tanh_v<VecF32x16>(y1); break;
        case llmaccel::kActRelu: y0 = relu_v<VecF32x16>(y0), y1 = relu_v<VecF32x16>(y1); break;
        default: break;
      }
      if (o.res) {  // the residual, after the activation (masked: no read past the last real column)
        y0 = _mm512_add_ps(y0, _mm512_maskz_loadu_ps(m0, o.res + r * o.r_sm));
        y1 = _mm512_add_ps(y1, _mm512_maskz_loadu_ps(m1, o.res + r * o.r_sm + 16));
      }
      float* yrow = o.y + r * o.y_sm;
      _mm512_mask_storeu_ps(yrow, m0, y0);
      _mm512_mask_storeu_ps(yrow + 16, m1, y1);
    }
  }

  static __mmask16 lanes_below(int n) {
    return n >= 16 ? __mmask16(0xFFFF) : n <= 0 ? __mmask16(0) : __mmask16((1u << n) - 1);
  }
};
using Avx512Outer = VnniOuterTile<Avx512OuterV>;

}  // namespace
}  // namespace LLMACCEL_CPU_CAPABILITY

// Plain (unpacked) weights run the outer-product tile only from this many rows and below this K; the
// dot-product tile reads the columns in place otherwise.  Below the rows, packing B (N * K bytes) costs more
// than the tile saves (as the AVX2 unit).  From the K on, the dot-product tile's per-tile reduction is a small
// share of its 64-byte k-steps and the pack is pure overhead: on a Zen 4 VM (2 threads, same process, vs
// torch._int_mm) 64 x 4096 x 11008 ran 0.57x through the outer tile (a fresh 45 MB pack buffer faults in
// every call) and 1.75x through the dot-product tile; 64 x 4096 x 4096 1.12x vs 1.69x; at K = 1024 the two
// were level (0.84-0.95x vs 0.95-1.00x), at K = 384 the outer tile led (2048 x 384 x 1536: 0.74x vs 0.64x).
constexpr int64_t kOuterMinRowsPlain512 = 64;
constexpr int64_t kOuterMaxKPlain512 = 1024;

void int8_mm_avx512vnni(const Int8MMProblem& p) {
  if (p.b_packed || (p.M >= kOuterMinRowsPlain512 && p.K < kOuterMaxKPlain512))
    run_int8_mm_outer<Avx512Outer>(p);
  else
    run_int8_mm<Avx512Vnni>(p);
}
// Packed weights feed the outer-product tile.
Int8MMLayout int8_mm_layout_avx512vnni() { return {Avx512Outer::NR, 4}; }
}  // namespace llmaccel
