// int8_mm for CPUs with AMX-INT8 (Sapphire Rapids and later Xeons).  Built
// with the AVX-512 level's flags plus -mamx-tile -mamx-int8; only called when
// CPUID reports every one of them, XCR0 shows the OS saves tile state, and
// Linux granted this process tile data (cpu_features.cpp asks once).
//
// The unit: TDPBSSD multiplies a 16 x 64 int8 tile of A by a 64 x 16 int8
// tile of B (stored "VNNI-interleaved": tile row t holds, for each of the 16
// columns, the 4 bytes k = 4t .. 4t+3) and adds the 16 x 16 int32 products
// into an accumulator tile: 16384 signed x signed multiply-adds per
// instruction, exact (each 4-product group sums into int32 with wrap-around,
// and the true result fits: K <= kInt8MMMaxK).  No +128 offset, no ones row,
// no horizontal reductions: the accumulator tile *is* the output block.
//
// Blocking.  8 tile registers: C00 C01 C10 C11 (a 32 x 32 output block), A0
// A1 (rows 0-15 and 16-31 of the block, one 64-byte k chunk each), B0 B1
// (columns 0-15 and 16-31).  Tiles are not renamed, so a load into a tile
// waits for the previous instruction reading it; the order below (load A0,
// B0, multiply; load B1, multiply; load A1, multiply twice) keeps one load in
// flight behind each multiply.  Measured in a bare loop on this file's target
// (2-core Sapphire Rapids class VM, one core, tiles rotating through 128 KiB):
// 2.86 TOP/s in this order, 0.81 TOP/s with the four loads grouped before the
// four multiplies, 3.45 TOP/s with no loads at all (the TMUL peak here).
//
// Memory layout.
//   A: the rows quantized / copied into one buffer, row-major, each row zero
//      padded to Kp = round_up(K, 64) bytes, rows padded with zeros to a
//      multiple of 32; a tile load reads 16 rows at stride Kp.
//   B: packed panels (int8_mm_pack_b with this variant's layout, or packed per
//      call from a plain nn.Linear weight): groups of 32 columns; per 64-byte
//      k chunk, the two 16-column B tiles back to back (2 KiB), so a group
//      streams sequentially.
//   The output block goes through a 32 x 32 int32 scratch (tile store), then
//   the epilogue writes C, or y = act(float(C) * x_scale * w_scale + bias)
//   with the same operations as the scalar epilogue (int8_mm_driver.h's
//   tile_entry), 16 columns per zmm.
#include <algorithm>
#include <immintrin.h>

#include "int8_mm_driver.h"
#include "int8_packed.h"
#include "vec_f32.h"

namespace llmaccel {
inline namespace LLMACCEL_CPU_CAPABILITY {  // see common.h
namespace {

constexpr int kTileRows = 16;    // rows of A and C per tile; columns of B and C per tile
constexpr int kNR = 32;          // columns per packed group (two B tiles)
constexpr int64_t kKA = 64;      // k bytes per chunk: one A tile row
constexpr int64_t kMB = 32;      // rows per output block (two A tiles)
constexpr int64_t kBTile = 1024;  // bytes of one B tile (16 rows x 64 bytes)

// The 64-byte LDTILECFG operand (palette 1): every tile 16 rows x 64 bytes.
struct TileConfig {
  uint8_t palette;
  uint8_t start_row;
  uint8_t reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

void configure_tiles() {
  TileConfig cfg{};
  cfg.palette = 1;
  for (int t = 0; t < 8; ++t) {
    cfg.colsb[t] = 64;
    cfg.rows[t] = kTileRows;
  }
  _tile_loadconfig(&cfg);
}

// One 32 x 32 output block (kTwo = false: rows 0-15 only) over `chunks` k
// chunks: A rows at a (stride lda bytes), the group's panel at b.  The int32
// block goes to cbuf (32 x 32, row stride 32).  kStream: the panel is not in L1
// (L3 / DRAM for the first row block of a group; L2 in the rows-outside order),
// so prefetch it a few chunks ahead.
template <bool kTwo, bool kStream>
inline void amx_block(const uint8_t* a, int64_t lda, const int8_t* b, int64_t chunks, int32_t* cbuf) {
  _tile_zero(0);
  _tile_zero(1);
  if constexpr (kTwo) {
    _tile_zero(2);
    _tile_zero(3);
  }
  for (int64_t j = 0; j < chunks; ++j) {
    const uint8_t* aj = a + j * kKA;
    const int8_t* bj = b + j * 2 * kBTile;
    if constexpr (kStream) {
#pragma GCC unroll 32
      for (int l = 0; l < 32; ++l) _mm_prefetch(reinterpret_cast<const char*>(bj + 4 * kBTile + 64 * l), _MM_HINT_T0);
    }
    _tile_loadd(4, aj, lda);
    _tile_loadd(6, bj, 64);
    _tile_dpbssd(0, 4, 6);
    _tile_loadd(7, bj + kBTile, 64);
    _tile_dpbssd(1, 4, 7);
    if constexpr (kTwo) {
      _tile_loadd(5, aj + kTileRows * lda, lda);
      _tile_dpbssd(2, 5, 6);
      _tile_dpbssd(3, 5, 7);
    }
  }
  _tile_stored(0, cbuf, kNR * 4);
  _tile_stored(1, cbuf + kTileRows, kNR * 4);
  if constexpr (kTwo) {
    _tile_stored(2, cbuf + kTileRows * kNR, kNR * 4);
    _tile_stored(3, cbuf + kTileRows * kNR + kTileRows, kNR * 4);
  }
}

inline __mmask16 lanes_below(int64_t n) {
  return n >= 16 ? __mmask16(0xFFFF) : n <= 0 ? __mmask16(0) : __mmask16((1u << n) - 1);
}

// Writes rows [0, R) x columns [0, Cn) of the block in cbuf to C or y; row r
// of the block is output row m0 + r, column c is n0 + c.
void block_epilogue(const Int8MMProblem& p, const int32_t* cbuf, int64_t m0, int64_t n0, int R, int Cn) {
  if (p.y) {
    __m512 ws[2], bias[2];
    __mmask16 mask[2];
    for (int h = 0; h < 2; ++h) {
      mask[h] = lanes_below(Cn - 16 * h);
      ws[h] = _mm512_maskz_loadu_ps(mask[h], p.w_scale + n0 + 16 * h);
      bias[h] = p.bias ? _mm512_maskz_loadu_ps(mask[h], p.bias + n0 + 16 * h) : _mm512_setzero_ps();
    }
    // Two rows (4 vectors) at a time, activated side by side (activation.h, VecGroup: why).  Lanes past Cn
    // hold the bias (zero weights) and are never stored.
    const int halves = mask[1] ? 2 : 1;
    for (int r0 = 0; r0 < R; r0 += 2) {
      const int rows = std::min(2, R - r0);
      __m512 v[4];
      for (int i = 0; i < 4; ++i) {
        const int r = r0 + (i >> 1), h = i & 1;
        if (r - r0 >= rows || h >= halves) {
          v[i] = _mm512_setzero_ps();  // no such vector: activated and dropped
          continue;
        }
        const __m512 acc = _mm512_cvtepi32_ps(_mm512_loadu_si512(cbuf + r * kNR + 16 * h));
        // The scalar epilogue's operations: fma(float(acc) * xs, ws, bias), then the activation.
        v[i] = _mm512_fmadd_ps(_mm512_mul_ps(acc, _mm512_set1_ps(p.x_scale[m0 + r])), ws[h], bias[h]);
      }
      activate_group<VecF32x16, 4>(p.activation, v);
      for (int i = 0; i < 4; ++i) {
        const int r = r0 + (i >> 1), h = i & 1;
        if (r - r0 >= rows || h >= halves) continue;
        float* yrow = p.y + (m0 + r) * p.y_sm + n0;
        if (p.residual)  // after the activation
          v[i] = _mm512_add_ps(v[i], _mm512_maskz_loadu_ps(mask[h], p.residual + (m0 + r) * p.r_sm + n0 + 16 * h));
        _mm512_mask_storeu_ps(yrow + 16 * h, mask[h], v[i]);
      }
    }
    return;
  }
  for (int r = 0; r < R; ++r) {
    int32_t* crow = p.c + (m0 + r) * p.c_sm + n0 * p.c_sn;
    const int32_t* src = cbuf + r * kNR;
    if (p.c_sn == 1) {
      for (int h = 0; h < 2; ++h) {
        const __mmask16 m = lanes_below(Cn - 16 * h);
        if (m) _mm512_mask_storeu_epi32(crow + 16 * h, m, _mm512_loadu_si512(src + 16 * h));
      }
    } else {
      for (int c = 0; c < Cn; ++c) crow[c * p.c_sn] = src[c];
    }
  }
}

// Bytes of quantized A kept per row block: the block's A tiles are re-read
// once per column group, so they should stay in L2 (2 MiB per core on
// Sapphire Rapids), next to the group's panel.
constexpr int64_t kABlockBytesAmx = 1024 * 1024;

// Packed B bytes that may stay in one core's L2 (half of Sapphire Rapids' 2 MiB): the rows-outside order.
constexpr int64_t kBInL2Bytes = 1024 * 1024;

// Below this many rows, a plain (unpacked) B is not worth repacking into
// tiles per call: the VNNI kernel reads plain columns directly.  Measured on
// 4096 x 4096 (2-core Sapphire Rapids class VM): the repack costs about as
// much as the VNNI product at M = 64, and the tile product wins clearly from
// M = 512 (int8_mm prefill).
constexpr int64_t kPlainBMinRows = 256;

void run_int8_mm_amx(const Int8MMProblem& p) {
  const int64_t M = p.M, N = p.N, K = p.K;
  if (M == 0 || N == 0) return;
  if (!p.b_packed && M < kPlainBMinRows) {
    // The AMX level includes every AVX-512 VNNI feature, so that variant may run here.
    int8_mm_avx512vnni(p);
    return;
  }
  const int64_t Kp = round_up(K, kKA), chunks = Kp / kKA;
  const int64_t Mp = round_up(M, kMB);
  const int64_t ngroups = ceil_div(N, int64_t(kNR));
  const Int8MMLayout L{kNR, static_cast<int>(kKA), true};

  // Every buffer is allocated before the parallel region (an exception must
  // not escape it): A, the per-thread smoothing rows, B panels for a plain
  // weight, and the per-thread 32 x 32 output scratch.
  auto a_owner = alloc_bytes(Mp * Kp);
  uint8_t* apack = a_owner.get();
  const int64_t smooth_row = round_up(K, 16);
  auto smooth_owner = alloc_bytes(p.x && p.smooth_inv ? smooth_row * 4 * p.nthreads : 0);
  float* smooth_all = reinterpret_cast<float*>(smooth_owner.get());
  auto b_owner = alloc_bytes(p.b_packed ? 0 : packed_panel_bytes(L, N, K));
  auto c_owner = alloc_bytes(int64_t(kMB) * kNR * 4 * p.nthreads);
  const int8_t* panels = p.b;
  if (!p.b_packed) {
    pack_panels(L, N, K, p.b, p.ldb, reinterpret_cast<int8_t*>(b_owner.get()), p.nthreads);
    panels = reinterpret_cast<const int8_t*>(b_owner.get());
  }

  // Row blocks: A of one block stays in L2 while every group of the thread
  // passes over it.  With few groups, smaller blocks give every thread work.
  int64_t MC = std::max<int64_t>(kMB, kABlockBytesAmx / std::max<int64_t>(Kp, 1) / kMB * kMB);
  const int64_t want_blocks = ceil_div(int64_t(2) * p.nthreads, ngroups);
  MC = std::min(MC, round_up(ceil_div(Mp, want_blocks), kMB));
  MC = round_up(ceil_div(Mp, ceil_div(Mp, MC)), kMB);  // equal blocks
  const int64_t nblocks = ceil_div(Mp, MC);
  // Loop order.  When the whole packed B fits in half an L2 and there are enough 32-row blocks to share out,
  // each thread takes whole 32-row blocks and walks every group for one block before the next (rows
  // outside): the block's A tiles stay in L1, B's panels come from L2 (prefetched a few chunks ahead), and
  // each output row is written left to right.  Otherwise (large K x N) row blocks of MC rows keep A in L2
  // while B's groups stream past, and each 32 x 32 block writes 32 rows 4N bytes apart.  Measured on the
  // MiniLM shapes at M = 4096 (2-core Sapphire Rapids class VM, same process, interleaved): 1.11-1.13x
  // per call (K x N = 384 x 1536 + GELU, 384 x 384, 1536 x 384), 1.04-1.07x for the whole int8 model.
  const int64_t nrow_blocks = ceil_div(M, kMB);
  const bool rows_outer = ngroups * kNR * Kp <= kBInL2Bytes && nrow_blocks >= 4 * int64_t(p.nthreads);

#pragma omp parallel num_threads(p.nthreads)
  {
    const int t = omp_get_thread_num();
    float* smoothed = smooth_all + smooth_row * t;
#pragma omp for schedule(static)
    for (int64_t m = 0; m < Mp; ++m) {
      uint8_t* dst = apack + m * Kp;
      if (m < M) {
        const ARow row = a_row(p, m, p.x ? p.x_scale + m : nullptr, smoothed);
        a_row_codes(row, 0, K, 0, dst);
        std::memset(dst + K, 0, Kp - K);
      } else {
        std::memset(dst, 0, Kp);
      }
    }
    // (the loop's barrier: every row is packed before any block reads it)
    configure_tiles();
    int32_t* cbuf = reinterpret_cast<int32_t*>(c_owner.get()) + int64_t(kMB) * kNR * t;
    if (rows_outer) {
#pragma omp for schedule(static)
      for (int64_t rb = 0; rb < nrow_blocks; ++rb) {
        const int64_t m0 = rb * kMB;
        const int R = static_cast<int>(std::min<int64_t>(kMB, M - m0));
        const uint8_t* a = apack + m0 * Kp;
        for (int64_t g = 0; g < ngroups; ++g) {
          const int64_t n0 = g * kNR;
          const int Cn = static_cast<int>(std::min<int64_t>(kNR, N - n0));
          const int8_t* panel = panels + g * kNR * Kp;
          if (R > kTileRows)
            amx_block<true, true>(a, Kp, panel, chunks, cbuf);
          else
            amx_block<false, true>(a, Kp, panel, chunks, cbuf);
          block_epilogue(p, cbuf, m0, n0, R, Cn);
        }
      }
    } else {
#pragma omp for schedule(static) collapse(2)
      for (int64_t blk = 0; blk < nblocks; ++blk) {
        for (int64_t g = 0; g < ngroups; ++g) {
          const int64_t n0 = g * kNR;
          const int Cn = static_cast<int>(std::min<int64_t>(kNR, N - n0));
          const int8_t* panel = panels + g * kNR * Kp;
          const int64_t r_end = std::min(Mp, (blk + 1) * MC);
          for (int64_t m0 = blk * MC; m0 < r_end && m0 < M; m0 += kMB) {
            const int R = static_cast<int>(std::min<int64_t>(kMB, M - m0));
            const uint8_t* a = apack + m0 * Kp;
            const bool first = m0 == blk * MC;
            if (R > kTileRows) {
              if (first)
                amx_block<true, true>(a, Kp, panel, chunks, cbuf);
              else
                amx_block<true, false>(a, Kp, panel, chunks, cbuf);
            } else {
              if (first)
                amx_block<false, true>(a, Kp, panel, chunks, cbuf);
              else
                amx_block<false, false>(a, Kp, panel, chunks, cbuf);
            }
            block_epilogue(p, cbuf, m0, n0, R, Cn);
          }
        }
      }
    }
    _tile_release();
  }
}

}  // namespace
}  // namespace LLMACCEL_CPU_CAPABILITY

void int8_mm_amx(const Int8MMProblem& p) { run_int8_mm_amx(p); }
Int8MMLayout int8_mm_layout_amx() { return {kNR, static_cast<int>(kKA), true}; }
}  // namespace llmaccel
