#pragma once
// The fused attention backward loop nest shared by every ISA variant (math in
// attention.h, AttentionBwdProblem).  Included after attention_driver.h by
// each variant's translation unit, in its anonymous namespace copy.
//
// Besides the forward's pack_kt / qk / exp_sum / pv, the ISA policy provides
//   pvt(n, m, Dv, p, ldp, v, ldv, o, ldo)   o[j][0:Dv) += sum_{i < m} p[i][j] v[i]  for j < n
//                                           (P used transposed: dV += P^T dO, dK += dS^T Q;
//                                           ldo a multiple of VL, o's padding may be written)
//
// Pass 0: delta_i = rowsum(dO_i * O_i) - dlse_i.
// Pass 1 (dK, dV): work item = (b, kv head, block of kNk keys); K^T and V^T of
//   the block are packed once; for every query head of the group and every
//   block of kMq query rows that can see the block:
//     S = Qs K^T (Qs = Q * scale, as in the forward, so S is the forward's)
//     P = exp(S - lse)  (masked keys -inf -> 0; rows with lse = -inf -> 0)
//     dP = dO V^T,  dS = P * (dP - delta)
//     dV += P^T dO,  dK += dS^T Qs
// Pass 2 (dQ): work item = (b, kv head, block of query rows of all the group's
//   heads, ~64 rows); the same S, P, dP, dS per kv block, then dQ += dS K, and
//   dQ * scale is written.

#include "attention_driver.h"

namespace llmaccel {
inline namespace LLMACCEL_CPU_CAPABILITY {  // see common.h
namespace {

constexpr int64_t kBwdNk = 64;    // keys per kv block
constexpr int64_t kBwdMq = 64;    // query rows per block in pass 1
constexpr int64_t kBwdRows = 64;  // target rows (group * q rows) per item in pass 2

// P = exp(S - lse) over keys [0, n) of one row, after masking (the forward's mask_row).
template <class Isa>
inline void bwd_probs(float* srow, int64_t n, bool masked, int64_t n_lim, const llmaccel::AttentionProblem& p,
                      const void* mr, float lse) {
  if (lse == kNegInf) {  // fully masked row: no probability anywhere
    std::fill(srow, srow + n, 0.0f);
    return;
  }
  if (masked) mask_row(srow, n, n_lim, p, mr);
  Isa::exp_sum(srow, n, lse);
}

inline void bwd_ds(const float* prow, float* dprow, int64_t n, float delta) {
  for (int64_t j = 0; j < n; ++j) dprow[j] = prow[j] * (dprow[j] - delta);
}

inline const void* bwd_mask_row(const llmaccel::AttentionProblem& p, int64_t b, int64_t h, int64_t i, int64_t n0) {
  if (p.mask_kind == llmaccel::kMaskBool)
    return static_cast<const uint8_t*>(p.mask) + b * p.m_sb + h * p.m_sh + i * p.m_sq + n0 * p.m_sk;
  if (p.mask_kind == llmaccel::kMaskFloat)
    return static_cast<const float*>(p.mask) + b * p.m_sb + h * p.m_sh + i * p.m_sq + n0 * p.m_sk;
  return nullptr;
}

// dst[0:n) = src[0:n) (stride sd) * mul.
inline void bwd_load_row(float* dst, const float* src, int64_t sd, int64_t n, float mul) {
  if (sd == 1) {
    for (int64_t d = 0; d < n; ++d) dst[d] = src[d] * mul;
  } else {
    for (int64_t d = 0; d < n; ++d) dst[d] = src[d * sd] * mul;
  }
}

inline void bwd_store_row(float* dst, int64_t sd, const float* src, int64_t n, float mul) {
  if (sd == 1) {
    for (int64_t d = 0; d < n; ++d) dst[d] = src[d] * mul;
  } else {
    for (int64_t d = 0; d < n; ++d) dst[d * sd] = src[d] * mul;
  }
}

template <class Isa>
void run_attention_bwd(const llmaccel::AttentionBwdProblem& bp) {
  using llmaccel::ceil_div;
  using llmaccel::round_up;
  const llmaccel::AttentionProblem& p = bp.f;
  constexpr int VL = Isa::VL;
  const int64_t B = p.B, Hq = p.Hq, Hkv = p.Hkv, Lq = p.Lq, Lk = p.Lk, D = p.D, Dv = p.Dv;
  const int64_t G = Hq / Hkv;
  const int64_t off = p.bottom_right ? Lk - Lq : 0;
  const float scale = p.scale;
  const bool has_mask = p.mask_kind != llmaccel::kMaskNone;
  const int64_t ldq = round_up(std::max<int64_t>(D, 1), VL), ldd = round_up(std::max<int64_t>(Dv, 1), VL);
  const int64_t ldkt = round_up(kBwdNk, VL) + VL, lds = ldkt;
  const int64_t nkb = ceil_div(Lk, kBwdNk);
  const bool pack_k_rows = p.k_sd != 1 && D > 1;
  // Pass 2 rows: qb2 rows of each of the G heads.
  const int64_t qb2_0 = std::max<int64_t>(1, std::min<int64_t>(Lq, kBwdRows / G));
  const int64_t nqb2 = ceil_div(Lq, qb2_0);
  const int64_t qb2 = ceil_div(Lq, nqb2);
  const int64_t M2 = G * qb2;
  const int64_t Mmax = std::max<int64_t>(kBwdMq, M2);
  const int64_t rows_all = B * Hq * Lq;

  FloatBuf delta = alloc_floats(rows_all);
  const int64_t items1 = B * Hkv * nkb, items2 = B * Hkv * nqb2;

  // Highest row of a kv block's first key visible: rows i with i + off >= n0 see key n0.
  auto first_row = [&](int64_t n0) -> int64_t {
    if (!p.causal) return 0;
    return std::min<int64_t>(Lq, std::max<int64_t>(0, n0 - off));
  };
  auto kv_end_for = [&](int64_t i_last) -> int64_t {
    if (!p.causal) return Lk;
    return std::min<int64_t>(Lk, std::max<int64_t>(i_last + off + 1, 0));
  };

  // Per-thread scratch, allocated here: a bad_alloc inside the parallel
  // region could not propagate (std::terminate).
  const int64_t kt_size = std::max<int64_t>(D, 1) * ldkt, vt_size = std::max<int64_t>(Dv, 1) * ldkt;
  struct Scratch {
    FloatBuf kt, vt, qs, dos, s, dp, acc_k, acc_v, kr;
    std::vector<float> ones;
  };
  std::vector<Scratch> scratch(static_cast<size_t>(p.nthreads));
  for (Scratch& t : scratch) {
    t.kt = alloc_floats(kt_size);
    t.vt = alloc_floats(vt_size);
    t.qs = alloc_floats(Mmax * ldq);
    t.dos = alloc_floats(Mmax * ldd);
    t.s = alloc_floats(Mmax * lds);
    t.dp = alloc_floats(Mmax * lds);
    t.acc_k = alloc_floats(std::max(kBwdNk, M2) * ldq);
    t.acc_v = alloc_floats(kBwdNk * ldd);
    t.kr = alloc_floats(pack_k_rows ? kBwdNk * ldq : 16);
    t.ones.assign(Mmax, 1.0f);
  }

#pragma omp parallel num_threads(p.nthreads)
  {
    // Pass 0: delta.
#pragma omp for schedule(static)
    for (int64_t x = 0; x < rows_all; ++x) {
      const int64_t i = x % Lq, bh = x / Lq, h = bh % Hq, b = bh / Hq;
      const float* o = p.out + b * p.o_sb + h * p.o_sh + i * p.o_sl;
      const float* g = bp.dout + b * bp.do_sb + h * bp.do_sh + i * bp.do_sl;
      float acc = 0.0f;
      for (int64_t d = 0; d < Dv; ++d) acc += o[d * p.o_sd] * g[d * bp.do_sd];
      delta.get()[x] = acc - (bp.dlse ? bp.dlse[x] : 0.0f);
    }

    Scratch& mine = scratch[omp_get_thread_num()];
    FloatBuf &kt = mine.kt, &vt = mine.vt, &qs = mine.qs, &dos = mine.dos, &s = mine.s, &dp = mine.dp,
             &acc_k = mine.acc_k, &acc_v = mine.acc_v, &kr = mine.kr;
    auto& ones = mine.ones;

    // Pass 1: dK, dV.  Heaviest first (causal: the first kv blocks see the most rows).
#pragma omp for schedule(dynamic, 1)
    for (int64_t w = 0; w < items1; ++w) {
      const int64_t kb = w / (B * Hkv), bh = w % (B * Hkv), hk = bh % Hkv, b = bh / Hkv;
      const int64_t n0 = kb * kBwdNk, n_full = std::min<int64_t>(kBwdNk, Lk - n0);
      // Keys of the block no query row attends (bool mask: padding) have P = 0, so dK = dV = 0 there:
      // they are cut off the block's end (the forward's bool_mask_extent, over every row of the G heads)
      // and their rows of dK / dV are stored as the zeros they are.
      const int64_t n = p.mask_kind == llmaccel::kMaskBool ? bool_mask_extent(p, b, hk, G, 0, Lq, n0, n_full) : n_full;
      const float* kbase = p.k + b * p.k_sb + hk * p.k_sh + n0 * p.k_sl;
      const float* vbase = p.v + b * p.v_sb + hk * p.v_sh + n0 * p.v_sl;
      if (n > 0) {
        Isa::pack_kt(kbase, p.k_sl, p.k_sd, n, D, kt.get(), ldkt);
        Isa::pack_kt(vbase, p.v_sl, p.v_sd, n, Dv, vt.get(), ldkt);
      }
      std::fill(acc_k.get(), acc_k.get() + kBwdNk * ldq, 0.0f);
      std::fill(acc_v.get(), acc_v.get() + kBwdNk * ldd, 0.0f);
      const int64_t i_start = n > 0 ? first_row(n0) : Lq;
      for (int64_t g = 0; g < G; ++g) {
        const int64_t h = hk * G + g;
        const float* lse_h = p.lse + (b * Hq + h) * Lq;
        const float* delta_h = delta.get() + (b * Hq + h) * Lq;
        for (int64_t i0 = i_start; i0 < Lq; i0 += kBwdMq) {
          const int64_t mi = std::min<int64_t>(kBwdMq, Lq - i0);
          for (int64_t r = 0; r < mi; ++r) {
            const int64_t i = i0 + r;
            bwd_load_row(qs.get() + r * ldq, p.q + b * p.q_sb + h * p.q_sh + i * p.q_sl, p.q_sd, D, scale);
            bwd_load_row(dos.get() + r * ldd, bp.dout + b * bp.do_sb + h * bp.do_sh + i * bp.do_sl, bp.do_sd, Dv,
                         1.0f);
          }
          Isa::qk(mi, n, D, qs.get(), ldq, kt.get(), ldkt, s.get(), lds, nullptr);
          const bool diag = p.causal && n0 + n - 1 > i0 + off;
          for (int64_t r = 0; r < mi; ++r) {
            const int64_t i = i0 + r;
            bwd_probs<Isa>(s.get() + r * lds, n, diag || has_mask, diag ? i + off + 1 - n0 : n, p,
                           bwd_mask_row(p, b, h, i, n0), lse_h[i]);
          }
          Isa::qk(mi, n, Dv, dos.get(), ldd, vt.get(), ldkt, dp.get(), lds, nullptr);
          for (int64_t r = 0; r < mi; ++r) bwd_ds(s.get() + r * lds, dp.get() + r * lds, n, delta_h[i0 + r]);
          Isa::pvt(n, mi, Dv, s.get(), lds, dos.get(), ldd, acc_v.get(), ldd);
          Isa::pvt(n, mi, D, dp.get(), lds, qs.get(), ldq, acc_k.get(), ldq);
        }
      }
      for (int64_t j = 0; j < n_full; ++j) {
        bwd_store_row(bp.dk + b * bp.dk_sb + hk * bp.dk_sh + (n0 + j) * bp.dk_sl, bp.dk_sd, acc_k.get() + j * ldq, D,
                      1.0f);
        bwd_store_row(bp.dv + b * bp.dv_sb + hk * bp.dv_sh + (n0 + j) * bp.dv_sl, bp.dv_sd, acc_v.get() + j * ldd,
                      Dv, 1.0f);
      }
    }

    // Pass 2: dQ.  Heaviest first (causal top-left: the last query blocks).
#pragma omp for schedule(dynamic, 1)
    for (int64_t w = 0; w < items2; ++w) {
      const int64_t t = nqb2 - 1 - w / (B * Hkv), bh = w % (B * Hkv), hk = bh % Hkv, b = bh / Hkv;
      const int64_t i0 = t * qb2, ni = std::min<int64_t>(qb2, Lq - i0);
      const int64_t Me = G * ni;  // rows r = g * ni + ii
      for (int64_t r = 0; r < Me; ++r) {
        const int64_t h = hk * G + r / ni, i = i0 + r % ni;
        bwd_load_row(qs.get() + r * ldq, p.q + b * p.q_sb + h * p.q_sh + i * p.q_sl, p.q_sd, D, scale);
        bwd_load_row(dos.get() + r * ldd, bp.dout + b * bp.do_sb + h * bp.do_sh + i * bp.do_sl, bp.do_sd, Dv, 1.0f);
      }
      std::fill(acc_k.get(), acc_k.get() + Me * ldq, 0.0f);
      const int64_t kv_end = kv_end_for(i0 + ni - 1);
      const float* kbase = p.k + b * p.k_sb + hk * p.k_sh;
      const float* vbase = p.v + b * p.v_sb + hk * p.v_sh;
      for (int64_t n0 = 0; n0 < kv_end; n0 += kBwdNk) {
        // Keys no row of this q block attends add nothing to dQ (P = 0, so dS = 0): cut or skip them.
        const int64_t n_full = std::min<int64_t>(kBwdNk, kv_end - n0);
        const int64_t n =
            p.mask_kind == llmaccel::kMaskBool ? bool_mask_extent(p, b, hk, G, i0, ni, n0, n_full) : n_full;
        if (n == 0) continue;
        Isa::pack_kt(kbase + n0 * p.k_sl, p.k_sl, p.k_sd, n, D, kt.get(), ldkt);
        Isa::pack_kt(vbase + n0 * p.v_sl, p.v_sl, p.v_sd, n, Dv, vt.get(), ldkt);
        Isa::qk(Me, n, D, qs.get(), ldq, kt.get(), ldkt, s.get(), lds, nullptr);
        const bool diag = p.causal && n0 + n - 1 > i0 + off;
        for (int64_t r = 0; r < Me; ++r) {
          const int64_t h = hk * G + r / ni, i = i0 + r % ni;
          bwd_probs<Isa>(s.get() + r * lds, n, diag || has_mask, diag ? i + off + 1 - n0 : n, p,
                         bwd_mask_row(p, b, h, i, n0), p.lse[(b * Hq + h) * Lq + i]);
        }
        Isa::qk(Me, n, Dv, dos.get(), ldd, vt.get(), ldkt, dp.get(), lds, nullptr);
        for (int64_t r = 0; r < Me; ++r) {
          const int64_t h = hk * G + r / ni, i = i0 + r % ni;
          bwd_ds(s.get() + r * lds, dp.get() + r * lds, n, delta.get()[(b * Hq + h) * Lq + i]);
        }
        const float* krows = kbase + n0 * p.k_sl;
        int64_t ldk = p.k_sl;
        if (pack_k_rows) {
          for (int64_t j = 0; j < n; ++j)
            for (int64_t d = 0; d < D; ++d) kr.get()[j * ldq + d] = krows[j * p.k_sl + d * p.k_sd];
          krows = kr.get();
          ldk = ldq;
        }
        Isa::pv(Me, n, D, dp.get(), lds, krows, ldk, ones.data(), acc_k.get(), ldq, nullptr);
      }
      for (int64_t r = 0; r < Me; ++r) {
        const int64_t h = hk * G + r / ni, i = i0 + r % ni;
        bwd_store_row(bp.dq + b * bp.dq_sb + h * bp.dq_sh + i * bp.dq_sl, bp.dq_sd, acc_k.get() + r * ldq, D, scale);
      }
    }
  }
}

}  // namespace
}  // namespace LLMACCEL_CPU_CAPABILITY
}  // namespace llmaccel
