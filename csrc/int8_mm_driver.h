#pragma once
// The blocked, threaded loop nest shared by every int8_mm ISA variant.
//
// Everything here lives in an anonymous namespace: each variant's translation
// unit gets its own copy compiled with its own target flags, and no AVX-512
// instantiation can be merged by the linker into a generic caller.
//
// Formulation ("dot-product" GEMM).  B columns are contiguous in k (the
// nn.Linear weight layout), A rows are packed contiguous in k, so one output
// C[m][n] is a dot product of two contiguous byte strings.  A register tile
// of R rows x C columns keeps R*C vector accumulators; every k-step loads R
// vectors of A and C vectors of B and issues R*C multiply-accumulates, and
// the lane partial sums are reduced once per tile at the end.  No packing of
// B is needed, which matters when M is small and B is streamed from memory.
//
// Cache blocking.  Rows are processed in blocks of MC rows whose packed A
// (MC x Kp bytes) stays in L2; inside a block the threads split the column
// groups (NR columns, NR x K bytes of B, held in L1 while all row tiles of the
// block reuse them).  B is read M / MC times in total.
//
// Signed x signed with VNNI.  vpdpbusd multiplies unsigned by signed bytes,
// so A is stored as u8 = a + 128 and   sum_k (a_k + 128) b_k = a.b + 128 * colsum(b).
// The column sums come for free from an extra packed row of ones (row 0),
// computed in the same tile as the first real rows.  All arithmetic wraps
// modulo 2^32 and the true result fits in int32 (K <= 131071), so the
// corrected value is exact even when intermediate sums wrap.
//
// An ISA policy provides:
//   static constexpr int MR, NR;        register tile (rows, columns)
//   static constexpr int64_t KALIGN;    packed A rows are padded to this many bytes
//   static constexpr bool kOnesRow;     A stored as a + 128 with a row of ones
//   template <int R, int C> static void tile(const uint8_t* a, int64_t lda,
//       const int8_t* b, int64_t ldb, int64_t K, int32_t* out);   // out[R*C]
//     tile() must read B only inside [0, K) of each column; A rows are padded
//     with zeros up to KALIGN (the value there never meets a nonzero B byte).

#include <omp.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <utility>
#include <vector>

#include "common.h"
#include "int8_mm.h"

namespace {

using TileFn = void (*)(const uint8_t*, int64_t, const int8_t*, int64_t, int64_t, int32_t*);

template <class Isa, int R, int C>
void tile_entry(const uint8_t* a, int64_t lda, const int8_t* b, int64_t ldb, int64_t K, int32_t* out) {
  Isa::template tile<R, C>(a, lda, b, ldb, K, out);
}

// tiles[r - 1][c - 1] -> tile<r, c>, so ragged edges get exact-size tiles.
template <class Isa>
struct TileTable {
  TileFn fn[Isa::MR][Isa::NR];
  template <int R, int... Cs>
  void fill_row(std::integer_sequence<int, Cs...>) {
    ((fn[R - 1][Cs] = &tile_entry<Isa, R, Cs + 1>), ...);
  }
  template <int... Rs>
  void fill(std::integer_sequence<int, Rs...>) {
    (fill_row<Rs + 1>(std::make_integer_sequence<int, Isa::NR>{}), ...);
  }
  TileTable() { fill(std::make_integer_sequence<int, Isa::MR>{}); }
};

struct AlignedFree {
  void operator()(void* p) const { std::free(p); }
};

inline std::unique_ptr<uint8_t, AlignedFree> alloc_bytes(int64_t n) {
  size_t bytes = static_cast<size_t>(llmaccel::round_up(std::max<int64_t>(n, 64), 64));
  void* p = std::aligned_alloc(64, bytes);
  if (!p) throw std::bad_alloc();
  return std::unique_ptr<uint8_t, AlignedFree>(static_cast<uint8_t*>(p));
}

// Target bytes of packed A kept hot in L2 per row block (L2 is 1-2 MiB per
// core on the machines we tune for; half of it leaves room for B and C).
constexpr int64_t kABlockBytes = 384 * 1024;

template <class Isa>
void run_int8_mm(const llmaccel::Int8MMProblem& p) {
  using llmaccel::ceil_div;
  using llmaccel::round_up;
  static const TileTable<Isa> table;
  constexpr int MR = Isa::MR, NR = Isa::NR;

  const int64_t M = p.M, N = p.N, K = p.K;
  const int64_t Kp = round_up(K, Isa::KALIGN);
  const int64_t row0 = Isa::kOnesRow ? 1 : 0;  // packed row of the first real A row
  const int64_t P = M + row0;                  // packed rows
  auto apack_owner = alloc_bytes(P * Kp);
  uint8_t* apack = apack_owner.get();

  const int64_t ngroups = ceil_div(N, NR);
  // With enough column groups for every thread, the ones row rides along in
  // the first row tile and threads split columns.  With very few columns, the
  // column sums are computed up front and threads split rows as well.
  const bool split_columns_only = ngroups >= 4 * p.nthreads;
  std::vector<int32_t> colsum(Isa::kOnesRow ? N : 0);

  int64_t MC = std::max<int64_t>(MR, kABlockBytes / std::max<int64_t>(Kp, 1) / MR * MR);
  MC = std::min<int64_t>(MC, round_up(P, MR));

#pragma omp parallel num_threads(p.nthreads)
  {
    // Pack A: rows contiguous in k, zero padded to Kp; u8 = a + 128 for VNNI.
#pragma omp for schedule(static)
    for (int64_t r = 0; r < P; ++r) {
      uint8_t* dst = apack + r * Kp;
      if (Isa::kOnesRow && r == 0) {
        std::memset(dst, 1, K);
      } else {
        const int8_t* src = p.a + (r - row0) * p.a_sm;
        if (Isa::kOnesRow) {
          for (int64_t k = 0; k < K; ++k) dst[k] = static_cast<uint8_t>(src[k * p.a_sk]) ^ 0x80u;
        } else {
          for (int64_t k = 0; k < K; ++k) dst[k] = static_cast<uint8_t>(src[k * p.a_sk]);
        }
      }
      std::memset(dst + K, 0, Kp - K);
    }

    // Stores one finished tile: packed row r maps to C row r - row0, and the
    // VNNI bias 128 * colsum(b) is removed (wrapping uint32 arithmetic).
    auto store = [&](int64_t r0, int R, int64_t n0, int Cn, const int32_t* out) {
      for (int r = 0; r < R; ++r) {
        const int64_t pr = r0 + r;
        if (Isa::kOnesRow && pr == 0) {
          for (int c = 0; c < Cn; ++c) colsum[n0 + c] = out[r * Cn + c];
          continue;
        }
        int32_t* crow = p.c + (pr - row0) * p.c_sm;
        for (int c = 0; c < Cn; ++c) {
          uint32_t v = static_cast<uint32_t>(out[r * Cn + c]);
          if (Isa::kOnesRow) v -= 128u * static_cast<uint32_t>(colsum[n0 + c]);
          crow[(n0 + c) * p.c_sn] = static_cast<int32_t>(v);
        }
      }
    };

    int32_t out[MR * NR];
    if (split_columns_only) {
      for (int64_t m0 = 0; m0 < P; m0 += MC) {
        const int64_t m1 = std::min(P, m0 + MC);
#pragma omp for schedule(static)
        for (int64_t g = 0; g < ngroups; ++g) {
          const int64_t n0 = g * NR;
          const int Cn = static_cast<int>(std::min<int64_t>(NR, N - n0));
          const int8_t* bcol = p.b + n0 * p.ldb;
          // Row tiles go in order, so the tile holding the ones row (packed
          // row 0) stores the column sums before any other tile needs them.
          for (int64_t r0 = m0; r0 < m1; r0 += MR) {
            const int R = static_cast<int>(std::min<int64_t>(MR, m1 - r0));
            table.fn[R - 1][Cn - 1](apack + r0 * Kp, Kp, bcol, p.ldb, K, out);
            store(r0, R, n0, Cn, out);
          }
        }
      }
    } else {
      if (Isa::kOnesRow) {
#pragma omp for schedule(static)
        for (int64_t g = 0; g < ngroups; ++g) {
          const int64_t n0 = g * NR;
          const int Cn = static_cast<int>(std::min<int64_t>(NR, N - n0));
          table.fn[0][Cn - 1](apack, Kp, p.b + n0 * p.ldb, p.ldb, K, out);
          store(0, 1, n0, Cn, out);
        }
      }
      const int64_t ntiles = ceil_div(M, MR);
#pragma omp for schedule(static) collapse(2)
      for (int64_t g = 0; g < ngroups; ++g) {
        for (int64_t t = 0; t < ntiles; ++t) {
          const int64_t n0 = g * NR;
          const int Cn = static_cast<int>(std::min<int64_t>(NR, N - n0));
          const int64_t r0 = row0 + t * MR;
          const int R = static_cast<int>(std::min<int64_t>(MR, P - r0));
          table.fn[R - 1][Cn - 1](apack + r0 * Kp, Kp, p.b + n0 * p.ldb, p.ldb, K, out);
          store(r0, R, n0, Cn, out);
        }
      }
    }
  }
}

}  // namespace
