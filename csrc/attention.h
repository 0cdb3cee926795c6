// Fused attention forward (FlashAttention-2 style) for fp32 on the CPU.
//
// Semantics are those of torch.nn.functional.scaled_dot_product_attention in
// the [B, H, L, D] layout (see /shared spec "attention_spec.md"):
//
//   s_ij  = scale * q_i . k_j  (+ mask_ij for a float mask)
//   j is attended iff the bool mask is true and (causal) j <= i + off,
//          off = 0 (top-left, SDPA's is_causal) or Lk - Lq (bottom-right)
//   out_i = sum_j softmax_j(s_i) v_j   over attended j,   lse_i = log sum_j exp(s_ij)
//   A query row with no attended key gets out_i = 0 and lse_i = -inf.
//
// GQA: query head h reads kv head h / (Hq / Hkv); K and V are never repeated.
//
// Algorithm (one work item = one batch, one kv head, one block of query rows,
// and ALL Hq / Hkv query heads of that kv head, packed as M = group * qb rows,
// so each K/V block is loaded once per group, not once per query head):
//
//   for each kv block [n0, n0 + Nb):
//     S  = Q K^T                 (Q pre-scaled by scale)
//     S += mask; causal -> -inf  (blocks entirely above the diagonal are skipped)
//     m' = max(m, rowmax S);  P = e^(S - m');  alpha = e^(m - m')
//        (e^x as 2^(x log2 e); the subtraction S - m' is done first, in
//        natural units, so it is exact for the keys that matter)
//     l  = alpha * l + rowsum P;  O = alpha * O + P V
//   out = O / l,  lse = m + log l
//
// K^T is packed per kv block; without a KV split one work item covers several
// q blocks of its (batch, kv head) and packs each K^T block once for all of
// them.  Decode-sized M (<= 16 rows) skips the pack: Q K^T comes straight
// from the K rows (4 keys x 4 rows per step, then a transpose-add tree), with
// software prefetch of K; V streams through the hardware prefetchers.
//
// Decode / few work items (flash-decoding): the KV range of each work item is
// split into chunks processed by different threads; each writes its partial
// (m, l, O) and a second pass combines them:
//   m* = max_s m_s,  l = sum_s e^(m_s - m*) l_s,  out = sum_s e^(m_s - m*) O_s / l.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace llmaccel {

// All strides are in elements.  The mask (mask_kind 1: uint8, nonzero =
// attend; 2: fp32 additive) is addressed as a 4-D [B, Hq, Lq, Lk] view with
// stride 0 on broadcast dims.  lse is contiguous [B, Hq, Lq] or null.
struct AttentionProblem {
  int64_t B, Hq, Hkv, Lq, Lk, D, Dv;
  const float* q;
  int64_t q_sb, q_sh, q_sl, q_sd;
  const float* k;
  int64_t k_sb, k_sh, k_sl, k_sd;
  const float* v;
  int64_t v_sb, v_sh, v_sl, v_sd;
  const void* mask;
  int mask_kind;
  int64_t m_sb, m_sh, m_sq, m_sk;
  bool causal;
  bool bottom_right;
  float scale;
  float* out;
  int64_t o_sb, o_sh, o_sl, o_sd;
  float* lse;
  int nthreads;
};

enum AttentionMaskKind { kMaskNone = 0, kMaskBool = 1, kMaskFloat = 2 };

// Validates every argument (ValueError / OverflowError with messages that
// start "llmaccel::attention:") and runs the best variant for this CPU, or
// the named one ("avx512", "avx2", "generic").
void attention_fwd(const AttentionProblem& p, const std::string& variant);

// Backward (FlashAttention-2 style, no dropout).  `f` is the forward problem
// (its out = the forward output, read only; its lse is required).  With
// delta_i = rowsum(dO_i * O_i) - dlse_i and P = exp(S - lse) recomputed per block:
//   dV = P^T dO,  dP = dO V^T,  dS = P * (dP - delta),  dQ = dS K * scale,  dK = dS^T Q * scale
// (dK, dV summed over each GQA group).  Pass 1 parallelizes over (b, kv head,
// kv block) and accumulates dK, dV for that block over every query row of the
// group; pass 2 over (b, kv head, q block) accumulates dQ.  No atomics.
// Blocks entirely above the causal diagonal are skipped.  Fully masked rows
// (lse = -inf) contribute nothing and get dQ = 0.  A float mask is added to
// the scores like the forward (its gradient, dS, is not produced).
struct AttentionBwdProblem {
  AttentionProblem f;
  const float* dout;
  int64_t do_sb, do_sh, do_sl, do_sd;
  const float* dlse;  // contiguous [B, Hq, Lq] or null (no gradient through lse)
  float* dq;
  int64_t dq_sb, dq_sh, dq_sl, dq_sd;
  float* dk;
  int64_t dk_sb, dk_sh, dk_sl, dk_sd;
  float* dv;
  int64_t dv_sb, dv_sh, dv_sl, dv_sd;
};

void attention_bwd(const AttentionBwdProblem& p, const std::string& variant);

// Variants this CPU can run, best first.
std::vector<std::string> attention_variants();

// y = 2^x elementwise with the kernel's own vectorized exp2 (exposed for
// tests: it must stay within ~2 ulp of the exact value for x >= -126, and
// is exactly 0 below).
void attention_exp2(int64_t n, const float* x, float* y, const std::string& variant);

// Per-variant entry points (attention_generic.cpp, attention_avx2.cpp,
// attention_avx512.cpp).
void attention_run_generic(const AttentionProblem& p);
void attention_run_avx2(const AttentionProblem& p);
void attention_run_avx512(const AttentionProblem& p);
void attention_bwd_generic(const AttentionBwdProblem& p);
void attention_bwd_avx2(const AttentionBwdProblem& p);
void attention_bwd_avx512(const AttentionBwdProblem& p);
void attention_exp2_generic(int64_t n, const float* x, float* y);
void attention_exp2_avx2(int64_t n, const float* x, float* y);
void attention_exp2_avx512(int64_t n, const float* x, float* y);

}  // namespace llmaccel
