#pragma once
// The blocked, threaded loop nest shared by every int8_mm ISA variant.
//
// Everything here lives in an anonymous namespace inside the unit's
// capability namespace (common.h): each variant's translation unit gets its
// own copy compiled with its own target flags, no AVX-512 instantiation can
// be merged by the linker into a generic caller, and the disassembly check
// (tests/test_isa.py) can tell from a symbol's name which level it is.
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
//   template <int R, int C, int kStream> static void tile(const uint8_t* a,
//       const BCols& b, int64_t K, int32_t* out);                  // out[R*C]
//     (kStream: how B arrives, a Stream value below; the ISA decides what
//     software prefetch that calls for)
//     tile() must read B only inside [0, K) of each column.
//
// Packed A layout ("interleaved by tile"): rows are grouped in tiles of MR;
// within a tile, chunk j (bytes [j*KALIGN, (j+1)*KALIGN) of each row) of the
// MR rows is stored back to back, so a k-step reads one contiguous run of
// MR * KALIGN bytes instead of MR separate streams:
//     row r, byte k  ->  tile_base + (k / KALIGN) * MR * KALIGN + r * KALIGN + k % KALIGN
// Rows are zero padded up to Kp (a multiple of KALIGN); padding never meets a
// nonzero B byte because tiles read B only inside [0, K).

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <type_traits>
#include <utility>
#include <vector>

#include "common.h"
#include "tile_table.h"
#include "activation.h"
#include "int8_mm.h"
#include "quantize.h"

namespace llmaccel {
inline namespace LLMACCEL_CPU_CAPABILITY {  // see common.h
namespace {

// How a tile's B columns arrive (the tile's kStream template argument).
enum Stream : int {
  kReuse = 0,          // already in L1/L2 (an earlier row tile of the block read them)
  kStreamColumns = 1,  // from L3/DRAM as NR separate columns of a plain nn.Linear weight
  kStreamPanels = 2,   // from L3/DRAM as one contiguous packed panel (int8_mm_pack_b)
};

// Where a finished R x C tile goes.  `c` addresses C at the tile's first real
// row and first column.  With kOnesRow, `colsum` addresses the column sums of
// the tile's columns; when the tile holds packed row 0 (the ones row), its
// first row *is* the column sums and is written there instead of to C.
// With a fused epilogue (y set), `c` is unused and y / xs address the tile's
// first real row, ws / bias its first column.
struct TileOut {
  int32_t* c;
  int64_t c_sm, c_sn;
  int32_t* colsum;
  bool first_is_ones;
  bool write_colsum;
  float* y;
  int64_t y_sm;
  const float* xs;
  const float* ws;
  const float* bias;
  int act;  // Activation applied after the epilogue's scale and bias
  const float* res;  // residual added after the activation (the tile's first real row), or null
  int64_t r_sm;
};

// B addressing inside one group of NR columns: column c, byte k (k a multiple
// of KALIGN) at b + c * cs + k * ks.  Plain columns: cs = ldb, ks = 1.
// Packed panels: cs = KALIGN, ks = NR.
struct BCols {
  const int8_t* b;
  int64_t cs, ks;
  int64_t next;  // bytes from this group's base to the next group's (for streaming prefetch)
};

using TileFn = void (*)(const uint8_t*, const BCols&, int64_t, const TileOut&);

// An ISA may provide a vector epilogue for its full MR x NR tile with a
// fused fp32 output (no ones row):  static void fused_epilogue(const int32_t*
// out, const TileOut& o)  computing exactly what tile_entry's scalar loop
// does below (same operations, same order).
template <class Isa, class = void>
struct HasFusedEpilogue : std::false_type {};
template <class Isa>
struct HasFusedEpilogue<Isa, std::void_t<decltype(&Isa::fused_epilogue)>> : std::true_type {};

// Runs one register tile and its epilogue.  R and C are compile-time here so
// the epilogue is a handful of vector instructions; with the store written
// as a runtime-sized scalar loop it cost ~10% of the whole GEMM at K = 4096.
template <class Isa, int kStream, int R, int C>
void tile_entry(const uint8_t* a, const BCols& b, int64_t K, const TileOut& o) {
  int32_t out[R * C];
  Isa::template tile<R, C, kStream>(a, b, K, out);
  if constexpr (HasFusedEpilogue<Isa>::value && R == Isa::MR && C == Isa::NR && !Isa::kOnesRow) {
    if (o.y && !o.res) {  // the vector epilogues have no residual; the scalar one below adds it
      Isa::fused_epilogue(out, o);
      return;
    }
  }
  int r_first = 0;
  uint32_t offset[C] = {};
  if constexpr (Isa::kOnesRow) {
    if (o.first_is_ones) {
      if (o.write_colsum)
        for (int c = 0; c < C; ++c) o.colsum[c] = out[c];
      r_first = 1;
    }
    // Remove the VNNI offset 128 * colsum(b); uint32 arithmetic wraps
    // modulo 2^32 and the exact result fits in int32.
    for (int c = 0; c < C; ++c) offset[c] = 128u * static_cast<uint32_t>(o.colsum[c]);
  }
  if (o.y) {
    float wb[C], bb[C];
    for (int c = 0; c < C; ++c) {
      wb[c] = o.ws[c];
      bb[c] = o.bias ? o.bias[c] : 0.0f;
    }
    float v[R * C];
    for (int r = r_first; r < R; ++r) {
      const float xs = o.xs[r - r_first];
      for (int c = 0; c < C; ++c) {
        const int32_t acc = static_cast<int32_t>(static_cast<uint32_t>(out[r * C + c]) - offset[c]);
        // Explicit fma: the same rounding on every variant and in the vector epilogues.
        v[r * C + c] = std::fma(static_cast<float>(acc) * xs, wb[c], bb[c]);
      }
    }
    if (o.act != kActNone) apply_activation(o.act, v + r_first * C, (R - r_first) * C);
    for (int r = r_first; r < R; ++r) {
      float* yrow = o.y + (r - r_first) * o.y_sm;
      if (o.res) {
        const float* rrow = o.res + (r - r_first) * o.r_sm;
        for (int c = 0; c < C; ++c) yrow[c] = v[r * C + c] + rrow[c];
      } else {
        for (int c = 0; c < C; ++c) yrow[c] = v[r * C + c];
      }
    }
    return;
  }
  for (int r = r_first; r < R; ++r) {
    int32_t* crow = o.c + (r - r_first) * o.c_sm;
    if (o.c_sn == 1) {
      for (int c = 0; c < C; ++c) crow[c] = static_cast<int32_t>(static_cast<uint32_t>(out[r * C + c]) - offset[c]);
    } else {
      for (int c = 0; c < C; ++c)
        crow[c * o.c_sn] = static_cast<int32_t>(static_cast<uint32_t>(out[r * C + c]) - offset[c]);
    }
  }
}

// fn[r - 1][c - 1] -> tile<r, c>, so ragged edges get exact-size tiles.
// Streaming tiles are the ones that meet their B columns first (from L3 or
// DRAM).  Plain columns: each column of an nn.Linear weight is a short (often
// one-page) stream the hardware prefetcher barely ramps up on, so the tile
// prefetches ahead in every column.  Packed panels are one long sequential
// stream the hardware prefetcher follows by itself; the tile only adds a
// short L2 lookahead.  Tiles that reuse B from L1/L2 skip all of it.
template <class Isa, int kStream>
struct TileEntries {
  template <int R, int C>
  struct At {
    static void run(const uint8_t* a, const BCols& b, int64_t K, const TileOut& o) {
      tile_entry<Isa, kStream, R, C>(a, b, K, o);
    }
  };
};
template <class Isa, int kStream>
using Int8TileTable = TileTable<Isa::MR, Isa::NR, TileEntries<Isa, kStream>::template At>;

struct AlignedFree {
  void operator()(void* p) const { std::free(p); }
};

inline std::unique_ptr<uint8_t, AlignedFree> alloc_bytes(int64_t n) {
  size_t bytes = static_cast<size_t>(llmaccel::round_up(std::max<int64_t>(n, 64), 64));
  void* p = std::aligned_alloc(64, bytes);
  if (!p) throw std::bad_alloc();
  return std::unique_ptr<uint8_t, AlignedFree>(static_cast<uint8_t*>(p));
}

// One row of A as the kernels consume it: int8 codes copied from A
// (int8_mm) or quantized per token from x (int8_linear's fused prologue).
// Shared by every loop nest, so each packs the same codes.
struct ARow {
  const int8_t* src = nullptr;  // int8 row, element k at src[k * sk]
  int64_t sk = 1;
  const float* x = nullptr;  // fp32 row to quantize (after smoothing)
  llmaccel::RowScale rs{};
};

// Sets up row m of A.  With the fused prologue (p.x set) the row is
// quantized per token and its scale goes to *scale_out; with p.smooth_inv
// set, the row quantized is x[k] * smooth_inv[k] (fp32 product, as torch's
// `x * torch.reciprocal(smooth)`), first written to `smoothed` (K floats of
// the calling thread's scratch).  Same row numerics as quantize_per_token (quantize.h:
// row_scale), so both give identical q; a non-finite row has no source
// (codes 0) and scale NaN.
inline ARow a_row(const llmaccel::Int8MMProblem& p, int64_t m, float* scale_out, float* smoothed) {
  ARow row;
  if (!p.x) {
    row.src = p.a + m * p.a_sm;
    row.sk = p.a_sk;
    return row;
  }
  const int64_t K = p.K;
  const float* xrow = p.x + m * p.x_sm;
  if (p.smooth_inv) {
    // A product with the reciprocal (computed once per call): the per-element
    // division it replaces was 58 % of the AVX2 prologue (perf, MiniLM).
    for (int64_t k = 0; k < K; ++k) smoothed[k] = xrow[k] * p.smooth_inv[k];
    xrow = smoothed;
  }
  row.rs = llmaccel::row_scale(xrow, K);
  *scale_out = row.rs.scale;
  if (!row.rs.nonfinite) row.x = xrow;
  return row;
}

// Codes k0 .. k0 + n - 1 of the row, each XOR flip (0x80 stores u8 = q + 128
// for u8 x s8 kernels), to dst.
inline void a_row_codes(const ARow& row, int64_t k0, int64_t n, uint8_t flip, uint8_t* dst) {
  if (row.x) {
    // nearbyint rounds half to even in the default rounding mode.
    if (!row.rs.tiny) {
      llmaccel::quantize_codes(row.x + k0, n, row.rs.inv, flip, dst);
    } else {
      const double sd = row.rs.scale;
      for (int64_t i = 0; i < n; ++i) {
        const double q = std::min(127.0, std::max(-127.0, std::nearbyint(row.x[k0 + i] / sd)));
        dst[i] = static_cast<uint8_t>(static_cast<int8_t>(q)) ^ flip;
      }
    }
  } else if (row.src) {
    if (row.sk == 1) {  // the common case, kept separate so it vectorizes
      for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<uint8_t>(row.src[k0 + i]) ^ flip;
    } else {
      for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<uint8_t>(row.src[(k0 + i) * row.sk]) ^ flip;
    }
  } else {
    std::memset(dst, flip, n);  // q = 0 (stored as 0 ^ flip): a non-finite x row
  }
}

// Packs row r of A (packed row r: the ones row when ones_row and r == 0)
// into its slot `base` of the packed layout: KALIGN-byte chunks, MR rows
// interleaved per chunk, zero padded to Kp.  u8 = a + 128 when the ISA
// multiplies u8 x s8.  scale_out / smoothed: see a_row.
template <class Isa>
inline void pack_a_row(const llmaccel::Int8MMProblem& p, uint8_t* base, int64_t Kp, int64_t r, bool ones_row,
                       float* scale_out, float* smoothed) {
  constexpr int MR = Isa::MR;
  constexpr int64_t KA = Isa::KALIGN;
  const int64_t K = p.K, row0 = ones_row ? 1 : 0;
  const bool ones = ones_row && r == 0;
  const uint8_t flip = Isa::kOnesRow ? 0x80u : 0u;
  const ARow row = ones ? ARow{} : a_row(p, r - row0, scale_out, smoothed);
  for (int64_t k0 = 0; k0 < Kp; k0 += KA) {
    uint8_t* dst = base + k0 * MR;
    const int64_t n = std::min<int64_t>(KA, std::max<int64_t>(K - k0, 0));
    if (ones)
      std::memset(dst, 1, n);
    else
      a_row_codes(row, k0, n, flip, dst);
    std::memset(dst + n, 0, KA - n);
  }
}

// Target bytes of packed A kept hot in L2 per row block (L2 is 1-2 MiB per
// core on the machines we tune for; half of it leaves room for B and C).
constexpr int64_t kABlockBytes = 384 * 1024;

template <class Isa>
void run_int8_mm(const llmaccel::Int8MMProblem& p) {
  using llmaccel::ceil_div;
  using llmaccel::round_up;
  static constexpr Int8TileTable<Isa, kReuse> table;
  static constexpr Int8TileTable<Isa, kStreamColumns> column_stream_table;
  static constexpr Int8TileTable<Isa, kStreamPanels> panel_stream_table;
  const TileFn(*stream_fn)[Isa::NR] = p.b_packed ? panel_stream_table.fn : column_stream_table.fn;
  constexpr int MR = Isa::MR, NR = Isa::NR;

  const int64_t M = p.M, N = p.N, K = p.K;
  const int64_t Kp = round_up(K, Isa::KALIGN);
  // With precomputed column sums of B (packed weights), no ones row is needed.
  const bool ones_row = Isa::kOnesRow && p.b_colsum == nullptr;
  const int64_t row0 = ones_row ? 1 : 0;  // packed row of the first real A row
  const int64_t P = M + row0;                  // packed rows
  constexpr int64_t KA = Isa::KALIGN;
  auto apack_owner = alloc_bytes(round_up(P, MR) * Kp);
  uint8_t* apack = apack_owner.get();
  // Per-thread row of smoothed x for the fused prologue (allocated before
  // the parallel region: an exception must not leave it).
  const int64_t smooth_row = round_up(K, 16);
  auto smooth_owner = alloc_bytes(p.x && p.smooth_inv ? smooth_row * 4 * p.nthreads : 0);
  float* smooth_all = reinterpret_cast<float*>(smooth_owner.get());

  const int64_t nr = NR;  // columns per group
  const int64_t ngroups = ceil_div(N, nr);
  // With enough column groups for every thread, the ones row rides along in
  // the first row tile and threads split columns.  With very few columns, the
  // column sums are computed up front and threads split rows as well.
  const bool split_columns_only = ngroups >= 4 * p.nthreads;
  std::vector<int32_t> colsum_buf(ones_row ? N : 0);
  int32_t* colsum = ones_row ? colsum_buf.data() : const_cast<int32_t*>(p.b_colsum);  // read-only when given

  int64_t MC = std::max<int64_t>(MR, kABlockBytes / std::max<int64_t>(Kp, 1) / MR * MR);
  MC = std::min<int64_t>(MC, round_up(P, MR));
  // Equal blocks (e.g. 513 rows as 6 x 88 rather than 5 x 96 + 33) keep
  // every pass over B equally long.
  MC = round_up(ceil_div(P, ceil_div(P, MC)), MR);

#pragma omp parallel num_threads(p.nthreads)
  {
    // Pack A (layout above); u8 = a + 128 when the ISA multiplies u8 x s8.
    float* smoothed = smooth_all + smooth_row * omp_get_thread_num();
#pragma omp for schedule(static)
    for (int64_t r = 0; r < P; ++r)
      pack_a_row<Isa>(p, apack + (r / MR) * MR * Kp + (r % MR) * KA, Kp, r, ones_row,
                      ones_row && r == 0 ? nullptr : p.x_scale + (r - row0), smoothed);

    // B columns of the group starting at column n0.
    auto bcols = [&](int64_t n0) {
      if (p.b_packed) return BCols{p.b + n0 * Kp, KA, NR, NR * Kp};
      return BCols{p.b + n0 * p.ldb, p.ldb, 1, NR * p.ldb};
    };

    // Tile output descriptor for packed rows starting at r0 (a multiple of MR).
    auto out_at = [&](int64_t r0, int64_t n0, bool write_colsum) {
      const bool ones = ones_row && r0 == 0;
      const int64_t crow = r0 + (ones ? 1 : 0) - row0;
      TileOut o{p.c + crow * p.c_sm + n0 * p.c_sn, p.c_sm, p.c_sn, Isa::kOnesRow ? colsum + n0 : nullptr,
                ones, write_colsum, nullptr, 0, nullptr, nullptr, nullptr, kActNone};
      if (p.y) {
        o.c = nullptr;
        o.y = p.y + crow * p.y_sm + n0;
        o.y_sm = p.y_sm;
        o.xs = p.x_scale + crow;
        o.ws = p.w_scale + n0;
        o.bias = p.bias ? p.bias + n0 : nullptr;
        o.act = p.activation;
        o.res = p.residual ? p.residual + crow * p.r_sm + n0 : nullptr;
        o.r_sm = p.r_sm;
      }
      return o;
    };

    if (split_columns_only) {
      for (int64_t m0 = 0; m0 < P; m0 += MC) {
        const int64_t m1 = std::min(P, m0 + MC);
        // nowait: no barrier between row blocks.  Blocks write disjoint rows
        // of C / y and only read packed A (complete after the packing loop's
        // barrier).  The one cross-block dependence, the column sums the ones
        // row stores in block 0 and later blocks read, stays within a thread:
        // every block's loop has the same trip count and static schedule, so
        // OpenMP gives group g to the same thread in every block.  A thread
        // descheduled on a shared machine then delays only its own columns
        // until the region's final barrier, not every block.
#pragma omp for schedule(static) nowait
        for (int64_t g = 0; g < ngroups; ++g) {
          const int64_t n0 = g * nr;
          const int Cn = static_cast<int>(std::min<int64_t>(nr, N - n0));
          const BCols bcol = bcols(n0);
          // While this group's row tiles run (compute-bound once M is more
          // than a few rows), pull the next group's B into L2, a slice per
          // tile, so its first tile does not wait on L3 or DRAM.
          const int64_t ntile = ceil_div(m1 - m0, MR);
          const int64_t next_bytes = std::min<int64_t>(nr, std::max<int64_t>(N - n0 - nr, 0)) * Kp;
          const BCols bnext = bcols(std::min<int64_t>(n0 + nr, N));
          const int64_t lines = ntile > 1 ? ceil_div(next_bytes, 64) : 0;
          const int64_t per_tile = ceil_div(lines, ntile);
          int64_t pf = 0;
          // Row tiles go in order, so the tile holding the ones row (packed
          // row 0) stores the column sums before any other tile needs them.
          for (int64_t r0 = m0; r0 < m1; r0 += MR) {
            const int R = static_cast<int>(std::min<int64_t>(MR, m1 - r0));
            for (const int64_t e = std::min(lines, pf + per_tile); pf < e; ++pf) {
              // Line pf of the next group: plain columns are NR runs of Kp
              // bytes at stride cs; packed panels are one run.
              const int64_t byte = pf * 64, c = byte / Kp, k = byte % Kp;
              __builtin_prefetch(bnext.b + (bnext.ks == 1 ? c * bnext.cs + k : byte), 0, 2);
            }
            const TileFn(*tiles)[NR] = r0 == m0 ? stream_fn : table.fn;
            tiles[R - 1][Cn - 1](apack + r0 * Kp, bcol, K, out_at(r0, n0, true));
          }
        }
      }
    } else {
      if (ones_row) {
#pragma omp for schedule(static)
        for (int64_t g = 0; g < ngroups; ++g) {
          const int64_t n0 = g * nr;
          const int Cn = static_cast<int>(std::min<int64_t>(nr, N - n0));
          stream_fn[0][Cn - 1](apack, bcols(n0), K, out_at(0, n0, true));
        }
      }
      const int64_t ntiles = ceil_div(P, MR);
#pragma omp for schedule(static) collapse(2)
      for (int64_t g = 0; g < ngroups; ++g) {
        for (int64_t t = 0; t < ntiles; ++t) {
          const int64_t n0 = g * nr;
          const int Cn = static_cast<int>(std::min<int64_t>(nr, N - n0));
          const int64_t r0 = t * MR;
          const int R = static_cast<int>(std::min<int64_t>(MR, P - r0));
          table.fn[R - 1][Cn - 1](apack + r0 * Kp, bcols(n0), K, out_at(r0, n0, false));
        }
      }
    }
  }
}

}  // namespace
}  // namespace LLMACCEL_CPU_CAPABILITY
}  // namespace llmaccel
