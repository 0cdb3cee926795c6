#pragma once
// The blocked, threaded flash-attention loop nest shared by every ISA
// variant (math and notation in attention.h).  Like int8_mm_driver.h, it
// lives in an anonymous namespace inside the unit's capability namespace
// (common.h) so each variant's translation unit gets its own copy compiled
// with its own target flags.
//
// An ISA policy provides (all buffers fp32, row-major with the given leading
// dimensions; "vector" = Isa::VL floats):
//   static constexpr int VL;
//   pack_kt(k, k_sl, k_sd, n, D, kt, ldkt)  kt[d][j] = k[j][d] for j < n; zero for n <= j < round_up(n, VL)
//   qk(M, n, D, q, ldq, kt, ldkt, s, lds, row_n)
//                                            s[r][0:round_up(n, VL)) = q[r] . kt[:, j]; with
//                                            row_n (causal diagonal blocks), s[r][j] for
//                                            j >= row_n[r] may be left unwritten (the
//                                            driver sets them to -inf)
//   rowmax(x, n)                             max of x[0:n)  (-inf when n == 0)
//   exp_sum(x, n, m)                         x[j] = e^(x[j] - m) = 2^((x[j] - m) log2 e) in place,
//                                            returns the sum
//   pv(M, n, Dv, p, ldp, v, ldv, alpha, o, ldo, row_n)
//                                            o[r][0:Dv) = alpha[r] * o[r] + sum_j p[r][j] v[j]
//                                            (with row_n, p[r][j] = 0 for j >= row_n[r]: may skip)
//                                            (ldo is a multiple of VL, o's padding may be written)
//   exp2(n, x, y)                            the vectorized 2^x used by exp_sum
//   qk_direct(M, n, D, q, ldq, k, k_sl, s, lds)
//                                            s[r][0:n) = q[r] . k[j] with K read in place
//                                            (rows contiguous, k_sd == 1); used for
//                                            decode-sized M, where packing K^T for a
//                                            few rows costs more than the products

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <vector>

#include "attention.h"
#include "common.h"
#include "memory.h"
#include "exp2_poly.h"
#include "tile_table.h"

namespace llmaccel {
inline namespace LLMACCEL_CPU_CAPABILITY {  // see common.h
namespace {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};
using FloatBuf = std::unique_ptr<float, FreeDeleter>;

// Scratch comes from llmaccel::scratch_alloc (bad_alloc -> MemoryError) and
// is allocated before any parallel region: an exception may not leave one.
inline FloatBuf alloc_floats(int64_t n) {
  return FloatBuf(static_cast<float*>(llmaccel::scratch_alloc(std::max<int64_t>(n, 16) * 4)));
}

// K^T of a block of n keys, read element by element through any strides:
// kt[d * ldkt + j] = k[j * k_sl + d * k_sd], columns n..round_up(n, VL) zero.
// The generic variant's packing, and the vector variants' fallback when the
// head dim of K is not contiguous (their fast path transposes in registers).
template <int VL>
inline void pack_kt_strided(const float* k, int64_t k_sl, int64_t k_sd, int64_t n, int64_t D, float* kt,
                            int64_t ldkt) {
  const int64_t np = llmaccel::round_up(n, VL);
  for (int64_t d = 0; d < D; ++d) {
    float* row = kt + d * ldkt;
    for (int64_t j = 0; j < n; ++j) row[j] = k[j * k_sl + d * k_sd];
    for (int64_t j = n; j < np; ++j) row[j] = 0.0f;
  }
}

// Largest M that computes Q K^T from the K rows in place (qk_direct).
constexpr int64_t kDirectMaxRows = 16;
// Largest per-thread cache of packed K^T blocks (floats) for reuse across the
// q blocks of one kv head: 512 KB, half of a Zen 4 L2.
constexpr int64_t kKtCacheFloats = 128 * 1024;

// Block sizes.  qb query rows of each of the `group` heads form M = group * qb
// rows (~64: Q, S, O and the K^T block stay in L2 while the micro-kernels
// stream them through L1).  Decode-sized M gets longer KV blocks so the
// per-block bookkeeping (pack, row max, rescale) is amortized over more keys.
struct Plan {
  int64_t group, qb, nqb, M, Nb, nsplit, off;
};

inline Plan make_plan(const llmaccel::AttentionProblem& p) {
  using llmaccel::ceil_div;
  Plan pl{};
  pl.group = p.Hq / p.Hkv;
  const int64_t target_rows = 64;
  const int64_t qb0 = std::max<int64_t>(1, std::min<int64_t>(p.Lq, target_rows / pl.group));
  pl.nqb = ceil_div(p.Lq, qb0);
  pl.qb = ceil_div(p.Lq, pl.nqb);  // equal blocks: 113 rows as 57 + 56, not 64 + 49
  pl.M = pl.group * pl.qb;
  if (pl.M <= 16) {
    pl.Nb = 512;
  } else {
    // Prefill: KV blocks of up to 512 keys (256 for D > 128, whose K^T block
    // would crowd L2), split evenly: Lk = 384 is one block, not 256 + 128.
    // Measured, 1 thread: 512 vs 256 is 1-2% faster on the benchmark shapes
    // (fewer O rescales and per-block row passes), 128 is 1-2% slower.
    const int64_t nb_max = p.D <= 128 ? 512 : 256;
    const int64_t nblk = std::max<int64_t>(1, ceil_div(p.Lk, nb_max));
    pl.Nb = std::max<int64_t>(16, llmaccel::round_up(ceil_div(p.Lk, nblk), 16));
  }
  pl.off = p.bottom_right ? p.Lk - p.Lq : 0;
  // Split the KV range when there are too few work items to keep several
  // threads busy with a few items each (dynamic scheduling then evens out
  // the ragged end).  Each split owns at least one KV block.  The split
  // count follows the problem's shape only, never the thread count: the
  // splits are combined in a fixed order, so any number of threads gives
  // the same bits (tests/test_determinism.py).  kSplitItems work items
  // keep up to 8 threads busy with 8 items each.
  constexpr int64_t kSplitItems = 64;
  const int64_t items = p.B * p.Hkv * pl.nqb;
  pl.nsplit = 1;
  if (items < kSplitItems) pl.nsplit = std::max<int64_t>(1, std::min(ceil_div(kSplitItems, items), ceil_div(p.Lk, pl.Nb)));
  return pl;
}

// Applies the causal limit and the mask to one row of scores: keys
// j >= n_lim get -inf, bool-masked keys get -inf, a float mask is added.
inline void mask_row(float* s, int64_t n, int64_t n_lim, const llmaccel::AttentionProblem& p, const void* mrow) {
  for (int64_t j = std::max<int64_t>(n_lim, 0); j < n; ++j) s[j] = kNegInf;
  if (p.mask_kind == llmaccel::kMaskBool) {
    const uint8_t* m = static_cast<const uint8_t*>(mrow);
    if (p.m_sk == 1) {
      for (int64_t j = 0; j < n; ++j) s[j] = m[j] ? s[j] : kNegInf;
    } else if (p.m_sk == 0) {
      if (!m[0])
        for (int64_t j = 0; j < n; ++j) s[j] = kNegInf;
    } else {
      for (int64_t j = 0; j < n; ++j) s[j] = m[j * p.m_sk] ? s[j] : kNegInf;
    }
  } else if (p.mask_kind == llmaccel::kMaskFloat) {
    const float* m = static_cast<const float*>(mrow);
    if (p.m_sk == 1) {
      for (int64_t j = 0; j < n; ++j) s[j] += m[j];
    } else {
      for (int64_t j = 0; j < n; ++j) s[j] += m[j * p.m_sk];
    }
  }
}

// Bool masks: how many leading keys of the block [n0, n0 + n) some row of the
// tile attends, i.e. 1 + the last attended key (0: no row attends any key of
// the block).  Keys past it are masked for every row, so the block is cut
// there (or skipped): they would add exp(-inf) = 0 to every row's sum and
// nothing to its max or output.  Padding masks are the case: a batch of
// sentences padded to 128 tokens attends ~10-30 keys per sentence, and the
// other keys cost QK, exp and PV work for nothing (SDPA does them all).
// Rows that share their mask row (a mask broadcast over queries or heads)
// are scanned once.
inline int64_t bool_mask_extent(const llmaccel::AttentionProblem& p, int64_t b, int64_t hk, int64_t G, int64_t i0,
                                int64_t ni, int64_t n0, int64_t n) {
  const uint8_t* base = static_cast<const uint8_t*>(p.mask) + b * p.m_sb + n0 * p.m_sk;
  int64_t extent = 0;
  const uint8_t* last = nullptr;
  for (int64_t g = 0; g < G && extent < n; ++g) {
    for (int64_t ii = 0; ii < ni && extent < n; ++ii) {
      const uint8_t* m = base + (hk * G + g) * p.m_sh + (i0 + ii) * p.m_sq;
      if (m == last) continue;
      last = m;
      if (p.m_sk == 0) {
        if (m[0]) extent = n;
        continue;
      }
      for (int64_t j = n - 1; j >= extent; --j)
        if (m[j * p.m_sk]) {
          extent = j + 1;
          break;
        }
    }
  }
  return extent;
}

template <class Isa>
void run_attention(const llmaccel::AttentionProblem& p) {
  using llmaccel::ceil_div;
  using llmaccel::round_up;
  constexpr int VL = Isa::VL;
  const Plan pl = make_plan(p);
  const int64_t G = pl.group, M = pl.M, Nb = pl.Nb, nsplit = pl.nsplit, nqb = pl.nqb;
  const int64_t D = p.D, Dv = p.Dv;
  const int64_t ldq = std::max<int64_t>(D, 1);
  // Rows of K^T and S are padded by one vector: with a power-of-two row
  // length (1 KB for Nb = 256) the rows of a column tile alias to a few L1
  // sets, which made packing K^T 2.3x slower.
  const int64_t ldkt = round_up(Nb, VL) + VL, lds = ldkt;
  const int64_t ldo = round_up(std::max<int64_t>(Dv, 1), VL);
  const bool pack_v = p.v_sd != 1 && Dv > 1;
  const float qscale = p.scale;
  // Few rows (decode): dot products straight from the K rows, no K^T pack.
  const bool direct = M <= kDirectMaxRows && p.k_sd == 1;
  const int64_t items = p.B * p.Hkv * nqb;  // (b, kv head, q block)
  // Without a KV split, a work item is a group of q blocks of one (b, kv
  // head): q blocks t = nqb - 1 - g, then every nqg-th below (heaviest
  // first), and the thread packs each K^T block once for the whole group (kt
  // then holds all of them) instead of once per q block.  Groups: enough items for dynamic scheduling to balance
  // (8 per thread), and only while the packed K^T fits comfortably in L2.
  const int64_t nblk_all = ceil_div(p.Lk, Nb);
  const bool reuse = nsplit == 1 && !direct && nqb > 1 && nblk_all * std::max<int64_t>(D, 1) * ldkt <= kKtCacheFloats;
  const int64_t nqg = reuse ? std::min(nqb, std::max<int64_t>(1, ceil_div(8 * p.nthreads, p.B * p.Hkv))) : nqb;
  const int64_t total = p.B * p.Hkv * nqg * nsplit;

  // Partial results of the KV splits: per (item, split) M rows of (m, l) and O.
  FloatBuf part_o, part_ml;
  if (nsplit > 1) {
    part_o = alloc_floats(total * M * ldo);
    part_ml = alloc_floats(total * M * 2);
  }

  // Largest kv end (exclusive) a query row i can attend to, for block skipping.
  auto kv_end_for = [&](int64_t i_last) -> int64_t {
    if (!p.causal) return p.Lk;
    return std::min<int64_t>(p.Lk, std::max<int64_t>(i_last + pl.off + 1, 0));
  };

  // Per-thread scratch, allocated here: a bad_alloc inside the parallel
  // region could not propagate (std::terminate).
  const int64_t kt_size = std::max<int64_t>(D, 1) * ldkt;
  struct Scratch {
    FloatBuf qs, kt, s, o, vs;
    std::vector<float> mrow, lrow, alpha;
    std::vector<int64_t> rown;  // causal diagonal blocks: keys row r attends, in [0, n]
  };
  std::vector<Scratch> scratch(static_cast<size_t>(p.nthreads));
  for (Scratch& t : scratch) {
    t.qs = alloc_floats(M * ldq);
    t.kt = alloc_floats(direct ? 16 : reuse ? nblk_all * kt_size : kt_size);
    t.s = alloc_floats(M * lds);
    t.o = alloc_floats(M * ldo);
    t.vs = alloc_floats(pack_v ? Nb * ldo : 16);
    t.mrow.resize(M);
    t.lrow.resize(M);
    t.alpha.resize(M);
    t.rown.resize(M);
  }

#pragma omp parallel num_threads(p.nthreads)
  {
    Scratch& mine = scratch[omp_get_thread_num()];
    FloatBuf &qs = mine.qs, &kt = mine.kt, &s = mine.s, &o = mine.o, &vs = mine.vs;
    auto &mrow = mine.mrow, &lrow = mine.lrow, &alpha = mine.alpha;
    auto& rown = mine.rown;

    // Heaviest q-blocks first (causal top-left: the last ones), so dynamic
    // scheduling fills the tail with light items.
#pragma omp for schedule(dynamic, 1)
    for (int64_t w = 0; w < total; ++w) {
      const int64_t sp = w % nsplit;
      int64_t rest = w / nsplit;
      const int64_t hk = rest % p.Hkv;
      rest /= p.Hkv;
      const int64_t b = rest % p.B;
      const int64_t g_or_t = rest / p.B;  // group index (nqg groups; = q block index when nqg == nqb)
      int64_t packed = 0;                 // K^T blocks of this (b, hk) already in kt (reuse)
      for (int64_t t = nqb - 1 - g_or_t; t >= 0; t -= nqg) {
        const int64_t i0 = t * pl.qb, ni = std::min<int64_t>(pl.qb, p.Lq - i0);
        const int64_t Me = G * ni;  // rows r = g * ni + ii
        const int64_t kv_end = kv_end_for(i0 + ni - 1);
        const int64_t nblk = ceil_div(kv_end, Nb);
        const int64_t blk0 = nblk * sp / nsplit, blk1 = nblk * (sp + 1) / nsplit;

        for (int64_t r = 0; r < Me; ++r) {
          const int64_t g = r / ni, ii = r % ni;
          const float* qrow = p.q + b * p.q_sb + (hk * G + g) * p.q_sh + (i0 + ii) * p.q_sl;
          float* dst = qs.get() + r * ldq;
          if (p.q_sd == 1) {
            for (int64_t d = 0; d < D; ++d) dst[d] = qrow[d] * qscale;
          } else {
            for (int64_t d = 0; d < D; ++d) dst[d] = qrow[d * p.q_sd] * qscale;
          }
          mrow[r] = kNegInf;
          lrow[r] = 0.0f;
          std::memset(o.get() + r * ldo, 0, sizeof(float) * ldo);
        }

        const float* kbase = p.k + b * p.k_sb + hk * p.k_sh;
        const float* vbase = p.v + b * p.v_sb + hk * p.v_sh;
        for (int64_t blk = blk0; blk < blk1; ++blk) {
          const int64_t n0 = blk * Nb, n_full = std::min<int64_t>(Nb, kv_end - n0);
          // Keys no row of the tile attends are cut off the block's end
          // (bool_mask_extent); K^T is still packed whole, since a later q
          // block of the group may attend more of them.
          const int64_t n =
              p.mask_kind == llmaccel::kMaskBool ? bool_mask_extent(p, b, hk, G, i0, ni, n0, n_full) : n_full;
          if (n == 0) {
            if (reuse && blk >= packed) {
              Isa::pack_kt(kbase + n0 * p.k_sl, p.k_sl, p.k_sd, n_full, D, kt.get() + blk * kt_size, ldkt);
              packed = blk + 1;
            }
            continue;
          }
          // The block needs per-row masking unless it lies entirely below the
          // diagonal of the first row and there is no explicit mask.
          const bool diag = p.causal && n0 + n - 1 > i0 + pl.off;
          if (diag)  // the same limit mask_row applies below; QK and PV skip the keys past it
            for (int64_t r = 0; r < Me; ++r) rown[r] = std::min(n, std::max<int64_t>(0, i0 + r % ni + pl.off + 1 - n0));
          if (direct) {
            Isa::qk_direct(Me, n, D, qs.get(), ldq, kbase + n0 * p.k_sl, p.k_sl, s.get(), lds);
          } else {
            float* ktb = reuse ? kt.get() + blk * kt_size : kt.get();
            // Every q block walks the blocks from 0 and the first of a group
            // walks the most, so the blocks below `packed` are all in place.
            if (!reuse || blk >= packed) {
              Isa::pack_kt(kbase + n0 * p.k_sl, p.k_sl, p.k_sd, reuse ? n_full : n, D, ktb, ldkt);
              packed = blk + 1;
            }
            Isa::qk(Me, n, D, qs.get(), ldq, ktb, ldkt, s.get(), lds, diag ? rown.data() : nullptr);
          }
          for (int64_t r = 0; r < Me; ++r) {
            const int64_t g = r / ni, i = i0 + r % ni;
            float* srow = s.get() + r * lds;
            if (diag || p.mask_kind != llmaccel::kMaskNone) {
              const int64_t n_lim = diag ? i + pl.off + 1 - n0 : n;
              const void* mr = nullptr;
              if (p.mask_kind == llmaccel::kMaskBool)
                mr = static_cast<const uint8_t*>(p.mask) + b * p.m_sb + (hk * G + g) * p.m_sh + i * p.m_sq +
                   n0 * p.m_sk;
              else if (p.mask_kind == llmaccel::kMaskFloat)
                mr = static_cast<const float*>(p.mask) + b * p.m_sb + (hk * G + g) * p.m_sh + i * p.m_sq +
                   n0 * p.m_sk;
              mask_row(srow, n, n_lim, p, mr);
            }
            const float mnew = std::max(mrow[r], Isa::rowmax(srow, n));
            // While a row has seen only masked keys its max is -inf; subtract
            // 0 instead so exp2 gives 0 (not NaN), and nothing is rescaled.
            const float mu = mnew == kNegInf ? 0.0f : mnew;
            const float a = mrow[r] == kNegInf ? 0.0f : std::exp(mrow[r] - mu);
            const float sum = Isa::exp_sum(srow, n, mu);
            lrow[r] = lrow[r] * a + sum;
            mrow[r] = mnew;
            alpha[r] = a;
          }
          const float* vb = vbase + n0 * p.v_sl;
          int64_t ldv = p.v_sl;
          if (pack_v) {
            for (int64_t j = 0; j < n; ++j)
              for (int64_t d = 0; d < Dv; ++d) vs.get()[j * ldo + d] = vb[j * p.v_sl + d * p.v_sd];
            vb = vs.get();
            ldv = ldo;
          }
          Isa::pv(Me, n, Dv, s.get(), lds, vb, ldv, alpha.data(), o.get(), ldo, diag ? rown.data() : nullptr);
        }

        if (nsplit > 1) {
          float* po = part_o.get() + w * M * ldo;
          float* pml = part_ml.get() + w * M * 2;
          std::memcpy(po, o.get(), sizeof(float) * Me * ldo);
          for (int64_t r = 0; r < Me; ++r) {
            pml[2 * r] = mrow[r];
            pml[2 * r + 1] = lrow[r];
          }
          continue;  // nsplit > 1: one q block per item, this is its only pass
        }
        for (int64_t r = 0; r < Me; ++r) {
          const int64_t g = r / ni, i = i0 + r % ni, h = hk * G + g;
          float* orow = p.out + b * p.o_sb + h * p.o_sh + i * p.o_sl;
          const float l = lrow[r];
          const float inv = l > 0.0f ? 1.0f / l : 0.0f;  // l == 0: no attended key
          const float* src = o.get() + r * ldo;
          if (p.o_sd == 1) {
            for (int64_t d = 0; d < Dv; ++d) orow[d] = src[d] * inv;
          } else {
            for (int64_t d = 0; d < Dv; ++d) orow[d * p.o_sd] = src[d] * inv;
          }
          if (p.lse) p.lse[(b * p.Hq + h) * p.Lq + i] = l > 0.0f ? mrow[r] + std::log(l) : kNegInf;
        }
      }  // q blocks of the group
    }

    if (nsplit > 1) {
      // Combine the splits of each (item, row).
#pragma omp for schedule(static)
      for (int64_t x = 0; x < items * M; ++x) {
        const int64_t item = x / M, r = x % M;
        int64_t rest = item;
        const int64_t hk = rest % p.Hkv;
        rest /= p.Hkv;
        const int64_t b = rest % p.B;
        const int64_t t = nqb - 1 - rest / p.B;
        const int64_t i0 = t * pl.qb, ni = std::min<int64_t>(pl.qb, p.Lq - i0);
        if (r >= G * ni) continue;
        const int64_t g = r / ni, i = i0 + r % ni, h = hk * G + g;
        float mstar = kNegInf;
        for (int64_t sp = 0; sp < nsplit; ++sp) {
          const float* pml = part_ml.get() + (item * nsplit + sp) * M * 2;
          if (pml[2 * r + 1] > 0.0f) mstar = std::max(mstar, pml[2 * r]);
        }
        float l = 0.0f;
        float* acc = o.get();  // this thread's O scratch (>= ldo floats), free now
        std::fill(acc, acc + Dv, 0.0f);
        if (mstar != kNegInf) {
          for (int64_t sp = 0; sp < nsplit; ++sp) {
            const float* pml = part_ml.get() + (item * nsplit + sp) * M * 2;
            if (!(pml[2 * r + 1] > 0.0f)) continue;
            const float c = std::exp(pml[2 * r] - mstar);
            l += c * pml[2 * r + 1];
            const float* po = part_o.get() + (item * nsplit + sp) * M * ldo + r * ldo;
            for (int64_t d = 0; d < Dv; ++d) acc[d] += c * po[d];
          }
        }
        const float inv = l > 0.0f ? 1.0f / l : 0.0f;
        float* orow = p.out + b * p.o_sb + h * p.o_sh + i * p.o_sl;
        for (int64_t d = 0; d < Dv; ++d) orow[d * p.o_sd] = acc[d] * inv;
        if (p.lse) p.lse[(b * p.Hq + h) * p.Lq + i] = l > 0.0f ? mstar + std::log(l) : kNegInf;
      }
    }
  }
}

}  // namespace
}  // namespace LLMACCEL_CPU_CAPABILITY
}  // namespace llmaccel
