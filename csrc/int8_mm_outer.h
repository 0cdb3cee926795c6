#pragma once
// The outer-product int8 GEMM loop nest, for ISA variants whose register
// tile multiplies a broadcast quad of A bytes by whole vectors of B columns
// (AVX2 today; the formulation fbgemm's and oneDNN's x86 kernels use).
//
// Why not the dot-product nest of int8_mm_driver.h.  There each output is
// a dot product of two k-contiguous byte strings held in vector lanes, so
// every register tile ends with a horizontal reduction of its R * C
// accumulators and a scattered epilogue.  At the K of sentence encoders
// (MiniLM: 384) a tile runs only 12 vector steps, and those fixed costs held
// the AVX2 GEMM at 33-44 MAC/ns against 60 at K = 4096 (one thread, Zen 3).
// Here each accumulator lane *is* one output C[m][n]: no reduction at all,
// and the epilogue converts, scales and stores whole rows of 8 outputs.
//
// Layouts (k runs in quads of 4 bytes, Kp = round_up(K, 4), nq = Kp / 4):
//   B panels (int8_mm_pack_b with layout {NR, 4}; zero padded in N and K):
//     panel g, quad j, column c, byte t  ->  bp[g * NR * Kp + j * NR * 4 + c * 4 + t]
//   so quad j of a panel is NR * 4 contiguous bytes: 8 columns x 4 k-bytes
//   per 32-byte vector.
//   A, per tile of MR rows (zero rows pad the last tile):
//     row r, quad j, byte t  ->  ap[tile * MR * Kp + j * MR * 4 + r * 4 + t]
//   so one quad step reads MR * 4 contiguous bytes of A.
//
// An ISA policy provides MR, NR, kAFlip and
//   template <int R, int kStream> static void tile(const int8_t* a,
//       const int8_t* b, int64_t nq, const OuterOut& o);
// which multiplies R (<= MR) rows of a packed A tile by one B panel over nq
// quads and writes the tile through o (fused fp32 epilogue or int32 C).
// A must hold no -128 when the policy's arithmetic needs that (the AVX2 sign
// trick); int8_linear's codes are in [-127, 127] by construction.
// kAFlip = 0x80 packs A as u8 = a + 128 for u8 x s8 products (vpdpbusd), any
// int8 A: the tile then subtracts 128 * colsum(b), and o.colsum holds the
// column sums of its panel (NR int32, zero past the last real column).
//
// Cache blocking.  Row blocks of MC rows keep their packed A (MC * Kp bytes)
// in L2; inside a block the threads split the panels (NR * Kp bytes each, in
// L1 for K up to ~1.5k at NR = 16), and each panel meets every row tile of
// the block before the next panel is touched.

#include <omp.h>

#include <algorithm>
#include <cstring>

#include "int8_mm_driver.h"
#include "int8_packed.h"

namespace llmaccel {
inline namespace LLMACCEL_CPU_CAPABILITY {  // see common.h
namespace {

// Where one R x NR tile goes.  Rows start at the tile's first row, columns at
// its panel's first column; `cols` of the NR are real (the last panel may be
// partial).  Fused epilogue (y set):
//     y[r][c] = act(fma(float(acc[r][c]) * xs[r], ws[c], bias[c])) (+ res[r][c])
// (the operations and order of tile_entry's scalar epilogue); else the exact
// int32 acc goes to c.
struct OuterOut {
  int cols;
  int32_t* c;
  int64_t c_sm, c_sn;
  float* y;
  int64_t y_sm;
  const float* xs;
  const float* ws;
  const float* bias;
  int act;
  const int32_t* colsum;  // kAFlip policies: sum_k B[k][n] of the panel's NR columns
  const float* res;       // residual rows (row r at res + r * r_sm), added after the activation, or null
  int64_t r_sm;
};

// Writes row m of A as quads at dst (stride MR * 4 bytes between quads):
// the codes go through `codes` (Kp bytes of the thread's scratch) so the
// quantize loop runs over a contiguous row and vectorizes.
template <int MR, uint8_t kFlip>
inline void pack_a_quads(const llmaccel::Int8MMProblem& p, int64_t m, int64_t Kp, uint8_t* dst, uint8_t* codes,
                         float* scale_out, float* smoothed) {
  const ARow row = a_row(p, m, scale_out, smoothed);
  a_row_codes(row, 0, p.K, kFlip, codes);
  std::memset(codes + p.K, 0, Kp - p.K);
  for (int64_t j = 0; j < Kp / 4; ++j) std::memcpy(dst + j * MR * 4, codes + 4 * j, 4);
}

template <class Isa, int kStream>
struct OuterTiles {
  using Fn = void (*)(const int8_t*, const int8_t*, int64_t, const OuterOut&);
  Fn fn[Isa::MR] = {};
  constexpr OuterTiles() { fill(std::make_integer_sequence<int, Isa::MR>{}); }

 private:
  template <int... I>
  constexpr void fill(std::integer_sequence<int, I...>) {
    ((fn[I] = &Isa::template tile<I + 1, kStream>), ...);
  }
};

// The runner.  Packs A (and B, when handed a plain weight) and runs the
// tiles; see the file comment for the layouts and blocking.
template <class Isa>
void run_int8_mm_outer(const llmaccel::Int8MMProblem& p) {
  using llmaccel::ceil_div;
  using llmaccel::round_up;
  constexpr int MR = Isa::MR, NR = Isa::NR;
  static constexpr OuterTiles<Isa, kReuse> reuse;
  static constexpr OuterTiles<Isa, kStreamPanels> stream;
  const int64_t M = p.M, N = p.N, K = p.K, Kp = round_up(K, 4), nq = Kp / 4;
  const int64_t npanels = ceil_div(N, NR), ntiles = ceil_div(M, MR);

  // B: the caller's panels, or the plain weight packed once for this call
  // (N * K bytes against 2 * M * N * K operations; callers route small M
  // with plain weights elsewhere).
  std::unique_ptr<uint8_t, AlignedFree> b_owner;
  const int8_t* bp = p.b;
  if (!p.b_packed) {
    b_owner = alloc_bytes(npanels * NR * Kp);
    llmaccel::pack_panels({NR, 4}, N, K, p.b, p.ldb, reinterpret_cast<int8_t*>(b_owner.get()), p.nthreads);
    bp = reinterpret_cast<const int8_t*>(b_owner.get());
  }

  // Column sums for kAFlip policies: the packed weight's own (int8_mm_pack_b), read in place, or, for a
  // plain weight (then M >= 64: N * K adds beside the 2 * M * N * K product), summed here.  A tile loads
  // NR sums, so the last, partial panel reads a zero-padded copy of its own.
  std::unique_ptr<uint8_t, AlignedFree> colsum_owner;
  const int32_t* colsum = nullptr;
  int32_t colsum_tail[NR] = {};
  if constexpr (Isa::kAFlip != 0) {
    if (p.b_packed) {
      if (!p.b_colsum) llmaccel::fail("int8_mm", "internal: a packed B without its column sums");
      colsum = p.b_colsum;
    } else {
      colsum_owner = alloc_bytes(N * 4);
      int32_t* sums = reinterpret_cast<int32_t*>(colsum_owner.get());
#pragma omp parallel for num_threads(p.nthreads) schedule(static)
      for (int64_t n = 0; n < N; ++n) {
        const int8_t* col = p.b + n * p.ldb;
        int32_t s = 0;
        for (int64_t k = 0; k < K; ++k) s += col[k];  // vectorizes (-O3)
        sums[n] = s;
      }
      colsum = sums;
    }
    const int64_t last = (npanels - 1) * NR;
    for (int64_t n = last; n < N; ++n) colsum_tail[n - last] = colsum[n];
  }

  auto out_at = [&](int64_t m0, int64_t g, const float* xs) {
    const int64_t n0 = g * NR;
    OuterOut o{static_cast<int>(std::min<int64_t>(NR, N - n0)), nullptr, p.c_sm, p.c_sn, nullptr, p.y_sm, nullptr,
               nullptr, nullptr, p.activation,
               !colsum ? nullptr : n0 + NR <= N ? colsum + n0 : colsum_tail};
    if (p.y) {
      o.y = p.y + m0 * p.y_sm + n0;
      o.xs = xs;
      o.ws = p.w_scale + n0;
      o.bias = p.bias ? p.bias + n0 : nullptr;
      o.res = p.residual ? p.residual + m0 * p.r_sm + n0 : nullptr;
      o.r_sm = p.r_sm;
    } else {
      o.c = p.c + m0 * p.c_sm + n0 * p.c_sn;
    }
    return o;
  };

  auto xs_at = [&](int64_t m0) -> const float* { return p.x ? p.x_scale + m0 : nullptr; };

  // Per-thread scratch, allocated before any parallel region (an exception
  // must not leave one: bad_alloc reaches Python as MemoryError): one row of
  // codes, and one row of smoothed x for the fused prologue.
  const int64_t codes_row = round_up(Kp, 64), smooth_row = round_up(K, 16);
  auto codes_all = alloc_bytes(codes_row * p.nthreads);
  auto smooth_all = alloc_bytes(p.x && p.smooth_inv ? smooth_row * 4 * p.nthreads : 0);
  auto scratch = [&](int t) {
    return std::make_pair(codes_all.get() + codes_row * t,
                          reinterpret_cast<float*>(smooth_all.get()) + smooth_row * t);
  };

  if (M <= MR) {
    // Decode: one parallel region and no barrier.  Each thread packs the few
    // rows itself (K bytes each) and streams its own contiguous range of
    // panels, one sequential run of the packed weight: on a shared machine a
    // barrier costs a scheduler slice whenever the other thread is
    // descheduled (int8_mm_avx2.cpp measured 0.48 of a plain read at M = 1).
    const int64_t slice = round_up(MR * Kp, 64);
    auto apack_all = alloc_bytes(slice * p.nthreads);
    const int R = static_cast<int>(M);
#pragma omp parallel num_threads(p.nthreads)
    {
      const int t = omp_get_thread_num(), T = omp_get_num_threads();
      uint8_t* apack = apack_all.get() + slice * t;
      std::memset(apack, 0, slice);
      float xs[MR];
      const auto [codes, smoothed] = scratch(t);
      for (int64_t r = 0; r < M; ++r) pack_a_quads<MR, Isa::kAFlip>(p, r, Kp, apack + 4 * r, codes, &xs[r], smoothed);
      if (p.x && t == 0)
        for (int64_t r = 0; r < M; ++r) p.x_scale[r] = xs[r];
      const int64_t g0 = npanels * t / T, g1 = npanels * (t + 1) / T;
      for (int64_t g = g0; g < g1; ++g)
        stream.fn[R - 1](reinterpret_cast<const int8_t*>(apack), bp + g * NR * Kp, nq, out_at(0, g, xs));
    }
    return;
  }

  // Rows per block: packed A of a block (MC * Kp bytes) stays in L2 while
  // every panel passes over it.
  const int64_t MC0 = std::max<int64_t>(MR, kABlockBytes / Kp / MR * MR);

  // Enough rows for every thread to fill whole blocks: each thread takes its
  // own contiguous rows and packs each block of them right before running
  // it.  No barrier, each core quantizes the x rows it multiplies (into its
  // own L2), and B is read no more often than when threads share blocks:
  // T * ceil(M / T / MC) passes against ceil(M / MC).  MiniLM's FC2 (4096 x
  // 1536 x 384, 2 threads) went from 1.34x to ~1.9x its one-thread rate.
  if (M >= p.nthreads * MC0) {
    // A block holds at most MC0 + 2 * MR - 1 rows (boundaries rounded to tiles).
    const int64_t slice = (MC0 + 2 * MR) * Kp;
    auto apack_all = alloc_bytes(slice * p.nthreads);
#pragma omp parallel num_threads(p.nthreads)
    {
      const int t = omp_get_thread_num(), T = omp_get_num_threads();
      uint8_t* apack = apack_all.get() + slice * t;
      const int8_t* ap = reinterpret_cast<const int8_t*>(apack);
      const auto [codes, smoothed] = scratch(t);
      const int64_t first = ntiles * t / T * MR, last = std::min(M, ntiles * (t + 1) / T * MR);
      const int64_t nblocks = ceil_div(last - first, MC0);
      for (int64_t b = 0; b < nblocks; ++b) {
        // Equal blocks: every pass over B equally long.
        const int64_t m0 = first + (last - first) * b / nblocks / MR * MR;
        const int64_t m1 = b + 1 == nblocks ? last : first + (last - first) * (b + 1) / nblocks / MR * MR;
        const int64_t rows = round_up(m1 - m0, MR);
        for (int64_t r = 0; r < rows; ++r) {
          uint8_t* dst = apack + (r / MR) * MR * Kp + (r % MR) * 4;
          if (m0 + r < m1) {
            pack_a_quads<MR, Isa::kAFlip>(p, m0 + r, Kp, dst, codes, p.x ? p.x_scale + m0 + r : nullptr, smoothed);
          } else {
            for (int64_t j = 0; j < nq; ++j) std::memset(dst + j * MR * 4, 0, 4);
          }
        }
        for (int64_t g = 0; g < npanels; ++g) {
          const int8_t* bg = bp + g * NR * Kp;
          for (int64_t r0 = m0; r0 < m1; r0 += MR) {
            const int R = static_cast<int>(std::min<int64_t>(MR, m1 - r0));
            (r0 == m0 ? stream.fn : reuse.fn)[R - 1](ap + (r0 - m0) * Kp, bg, nq, out_at(r0, g, xs_at(r0)));
          }
        }
      }
    }
    return;
  }

  auto apack_owner = alloc_bytes(ntiles * MR * Kp);
  uint8_t* apack = apack_owner.get();
  const int8_t* ap = reinterpret_cast<const int8_t*>(apack);
  int64_t MC = std::min<int64_t>(MC0, ntiles * MR);
  MC = round_up(ceil_div(M, ceil_div(M, MC)), MR);  // equal blocks: every pass over B equally long
  // With too few panels to share, threads split (panel, row tile) pairs.
  const bool split_panels = npanels >= 4 * p.nthreads;

#pragma omp parallel num_threads(p.nthreads)
  {
    const auto [codes, smoothed] = scratch(omp_get_thread_num());
#pragma omp for schedule(static)
    for (int64_t m = 0; m < ntiles * MR; ++m) {
      uint8_t* dst = apack + (m / MR) * MR * Kp + (m % MR) * 4;
      if (m < M) {
        pack_a_quads<MR, Isa::kAFlip>(p, m, Kp, dst, codes, p.x ? p.x_scale + m : nullptr, smoothed);
      } else {
        for (int64_t j = 0; j < nq; ++j) std::memset(dst + j * MR * 4, 0, 4);
      }
    }
    if (split_panels) {
      for (int64_t m0 = 0; m0 < M; m0 += MC) {
        const int64_t m1 = std::min(M, m0 + MC);
        // nowait: blocks write disjoint rows and only read packed A, complete
        // after the packing loop's barrier; a descheduled thread then delays
        // only its own panels, not every block.
#pragma omp for schedule(static) nowait
        for (int64_t g = 0; g < npanels; ++g) {
          const int8_t* b = bp + g * NR * Kp;
          for (int64_t r0 = m0; r0 < m1; r0 += MR) {
            const int R = static_cast<int>(std::min<int64_t>(MR, m1 - r0));
            // The first tile meets the panel from L3 / DRAM.
            (r0 == m0 ? stream.fn : reuse.fn)[R - 1](ap + r0 * Kp, b, nq, out_at(r0, g, xs_at(r0)));
          }
        }
      }
    } else {
#pragma omp for schedule(static) collapse(2)
      for (int64_t g = 0; g < npanels; ++g) {
        for (int64_t t = 0; t < ntiles; ++t) {
          const int64_t r0 = t * MR;
          const int R = static_cast<int>(std::min<int64_t>(MR, M - r0));
          reuse.fn[R - 1](ap + r0 * Kp, bp + g * NR * Kp, nq, out_at(r0, g, xs_at(r0)));
        }
      }
    }
  }
}

}  // namespace
}  // namespace LLMACCEL_CPU_CAPABILITY
}  // namespace llmaccel
