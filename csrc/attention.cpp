// attention_fwd entry point: validation and variant selection (the loop nest
// is attention_driver.h, the ISA kernels attention_generic.cpp,
// attention_avx2.cpp and attention_avx512.cpp).
#include "attention.h"

#include <string>

#include "common.h"
#include "variants.h"

namespace llmaccel {

namespace {

const char* kOp = "attention";

const Variant& pick(const std::string& name) { return llmaccel::pick(Family::attention, kOp, name); }

// Offset of the last element of a strided 4-D view (sizes > 0), or failure
// on int64 overflow.  Strides must be >= 0.
void check_tensor(const char* name, const void* ptr, const int64_t (&size)[4], const int64_t (&stride)[4]) {
  bool empty = false;
  for (int i = 0; i < 4; ++i) {
    if (stride[i] < 0) fail(kOp, std::string(name) + " has a negative stride (" + std::to_string(stride[i]) + ")");
    empty = empty || size[i] == 0;
  }
  if (empty) return;
  if (ptr == nullptr) fail(kOp, std::string(name) + " is a null pointer");
  int64_t last = 0;
  for (int i = 0; i < 4; ++i) {
    int64_t t = 0;
    if (__builtin_mul_overflow(size[i] - 1, stride[i], &t) || __builtin_add_overflow(last, t, &last))
      fail_overflow(kOp, std::string(name) + ": index arithmetic overflows int64");
  }
  check_reach(kOp, name, last);
}

}  // namespace

std::vector<std::string> attention_variants() { return available_variants(Family::attention); }

void attention_exp2(int64_t n, const float* x, float* y, const std::string& variant) {
  if (n < 0) fail(kOp, "exp2: negative length");
  if (n > 0 && (x == nullptr || y == nullptr)) fail(kOp, "exp2: null pointer");
  pick(variant).kernels.attention_exp2(n, x, y);
}

namespace {

// Argument checks shared by the forward and the backward; returns the variant.
const Variant& check_problem(const AttentionProblem& p, const std::string& variant) {
  const int64_t sizes[] = {p.B, p.Hq, p.Hkv, p.Lq, p.Lk, p.D, p.Dv};
  const char* names[] = {"B", "Hq", "Hkv", "Lq", "Lk", "D", "Dv"};
  for (int i = 0; i < 7; ++i)
    if (sizes[i] < 0) fail(kOp, std::string(names[i]) + " is negative (" + std::to_string(sizes[i]) + ")");
  if (p.Hkv == 0 && p.Hq > 0) fail(kOp, "Hkv must be positive when Hq > 0");
  if (p.Hkv > 0 && p.Hq % p.Hkv != 0)
    fail(kOp, "Hq (" + std::to_string(p.Hq) + ") must be a multiple of Hkv (" + std::to_string(p.Hkv) + ")");
  if (p.mask_kind < kMaskNone || p.mask_kind > kMaskFloat)
    fail(kOp, "mask_kind must be 0 (none), 1 (bool) or 2 (float), got " + std::to_string(p.mask_kind));
  if (p.causal && p.mask_kind != kMaskNone) fail(kOp, "is_causal and an explicit mask cannot be used together");
  if (p.bottom_right && !p.causal) fail(kOp, "causal_bottom_right requires is_causal");
  if (p.nthreads < 1) fail(kOp, "nthreads must be >= 1, got " + std::to_string(p.nthreads));
  const Variant& v = pick(variant);

  check_tensor("q", p.q, {p.B, p.Hq, p.Lq, p.D}, {p.q_sb, p.q_sh, p.q_sl, p.q_sd});
  check_tensor("k", p.k, {p.B, p.Hkv, p.Lk, p.D}, {p.k_sb, p.k_sh, p.k_sl, p.k_sd});
  check_tensor("v", p.v, {p.B, p.Hkv, p.Lk, p.Dv}, {p.v_sb, p.v_sh, p.v_sl, p.v_sd});
  check_tensor("out", p.out, {p.B, p.Hq, p.Lq, p.Dv}, {p.o_sb, p.o_sh, p.o_sl, p.o_sd});
  if (p.mask_kind != kMaskNone)
    check_tensor("mask", p.mask, {p.B, p.Hq, p.Lq, p.Lk}, {p.m_sb, p.m_sh, p.m_sq, p.m_sk});
  int64_t rows = 0;
  if (__builtin_mul_overflow(p.B, p.Hq, &rows) || __builtin_mul_overflow(rows, p.Lq, &rows))
    fail_overflow(kOp, "B * Hq * Lq overflows int64");
  if (p.lse) check_tensor("lse", p.lse, {p.B, p.Hq, p.Lq, 1}, {p.Hq * p.Lq, p.Lq, 1, 1});
  // Scratch sizes (rows * head dims, kv blocks) must fit comfortably; a head
  // dim this large is far outside any model and would exhaust memory anyway.
  if (p.D > (int64_t{1} << 24) || p.Dv > (int64_t{1} << 24))
    fail(kOp, "head dims above 2^24 are not supported (D = " + std::to_string(p.D) +
                  ", Dv = " + std::to_string(p.Dv) + ")");
  if (p.Hkv > 0 && p.Hq / p.Hkv > (int64_t{1} << 16))
    fail(kOp, "more than 65536 query heads per kv head are not supported");
  return v;
}

// Zero fill of a strided 4-D fp32 view.
void zero4(float* t, const int64_t (&size)[4], const int64_t (&stride)[4]) {
  for (int64_t a = 0; a < size[0]; ++a)
    for (int64_t b = 0; b < size[1]; ++b)
      for (int64_t c = 0; c < size[2]; ++c)
        for (int64_t d = 0; d < size[3]; ++d) t[a * stride[0] + b * stride[1] + c * stride[2] + d * stride[3]] = 0.0f;
}

}  // namespace

void attention_fwd(const AttentionProblem& p, const std::string& variant) {
  const Variant& v = check_problem(p, variant);
  // Dv == 0 still runs: the log-sum-exp of each row is wanted.
  if (p.B * p.Hq * p.Lq == 0) return;
  v.kernels.attention_fwd(p);
}

void attention_bwd(const AttentionBwdProblem& bp, const std::string& variant) {
  const AttentionProblem& p = bp.f;
  const Variant& v = check_problem(p, variant);
  const int64_t B = p.B, Hq = p.Hq, Hkv = p.Hkv, Lq = p.Lq, Lk = p.Lk, D = p.D, Dv = p.Dv;
  if (B * Hq * Lq > 0 && p.lse == nullptr) fail(kOp, "backward: lse is a null pointer");
  check_tensor("dout", bp.dout, {B, Hq, Lq, Dv}, {bp.do_sb, bp.do_sh, bp.do_sl, bp.do_sd});
  check_tensor("dq", bp.dq, {B, Hq, Lq, D}, {bp.dq_sb, bp.dq_sh, bp.dq_sl, bp.dq_sd});
  check_tensor("dk", bp.dk, {B, Hkv, Lk, D}, {bp.dk_sb, bp.dk_sh, bp.dk_sl, bp.dk_sd});
  check_tensor("dv", bp.dv, {B, Hkv, Lk, Dv}, {bp.dv_sb, bp.dv_sh, bp.dv_sl, bp.dv_sd});
  if (B * Hq * Lq == 0 || Lk == 0) {  // nothing attended: every gradient is 0
    zero4(bp.dq, {B, Hq, Lq, D}, {bp.dq_sb, bp.dq_sh, bp.dq_sl, bp.dq_sd});
    zero4(bp.dk, {B, Hkv, Lk, D}, {bp.dk_sb, bp.dk_sh, bp.dk_sl, bp.dk_sd});
    zero4(bp.dv, {B, Hkv, Lk, Dv}, {bp.dv_sb, bp.dv_sh, bp.dv_sl, bp.dv_sd});
    return;
  }
  v.kernels.attention_bwd(bp);
}

}  // namespace llmaccel
