"""Triton fused attention backward (FlashAttention-2 style): kernels, autotune configs and launcher.

Same conventions as the forward: scores t with exp(s) = 2^(exp_scale * t) (t = q . k when the scale
rides in the exponent, else t = scale * q . k + mask), so with lse in natural log

    P = exp(s - lse) = 2^(exp_scale * (t - lse_t)),   lse_t = lse * log2(e) / exp_scale

(subtracting before scaling, like the forward). Fully masked rows have lse = -inf: lse_t is
replaced by +inf there so that P = 0, hence dS = 0 and every gradient of that row is 0.

    delta_i = rowsum(dO_i * O_i) - dlse_i                      (preprocess kernel, fp32)
    dS      = P * (dO V^T - delta)                             (natural-log units)
    dV      = P^T dO     dK = scale * dS^T Q     dQ = scale * dS K

dK/dV kernel: one program per (key block, b * Hkv); it loops over the query heads of its GQA group
and their query blocks (from the first block that can attend its keys when causal), so dK/dV are
written once, without atomics. dQ kernel: one program per (query block, b * Hq) over the key
blocks it can attend. Masks (bool or float: no float-mask gradient) are read through strides.
"""

import torch
import triton
import triton.language as tl

from . import attention_spills as spills
from ._interpret import INTERPRET as _INTERPRET
from .attention_common import (_LOG2E, batch_chunks, check_gqa, dot_fp32, host_rounds, launch_params,
                               on_device, qkv_dims)


@triton.jit
def _attn_bwd_preprocess_kernel(
    o_ptr, do_ptr, dlse_ptr, delta_ptr,
    Hq, Lq, Dv,
    stride_ob, stride_oh, stride_ol, stride_od,
    stride_dob, stride_doh, stride_dol, stride_dod,
    HAS_DLSE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_DV: tl.constexpr,
):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    b = bh // Hq
    h = bh % Hq
    offs_m = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    offs_dv = tl.arange(0, BLOCK_DV).to(tl.int64)
    row_ok = offs_m < Lq
    ld = row_ok[:, None] & (offs_dv < Dv)[None, :]
    o = tl.load(o_ptr + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_ol + offs_dv[None, :] * stride_od,
                mask=ld, other=0.0).to(tl.float32)
    do = tl.load(do_ptr + b * stride_dob + h * stride_doh + offs_m[:, None] * stride_dol
                 + offs_dv[None, :] * stride_dod, mask=ld, other=0.0).to(tl.float32)
    delta = tl.sum(o * do, 1)
    if HAS_DLSE:
        delta = delta - tl.load(dlse_ptr + bh * Lq + offs_m, mask=row_ok, other=0.0)
    tl.store(delta_ptr + bh * Lq + offs_m, delta, mask=row_ok)


@triton.jit
def _attn_bwd_probs(
    q, kT, mask_base, offs_m, offs_n, row_ok, n_ok, lse_t,
    causal_off, score_scale, exp_scale, stride_mq, stride_mk,
    MASK_KIND: tl.constexpr, SCALE_IN_EXP: tl.constexpr, IS_CAUSAL: tl.constexpr, DOT_FP32: tl.constexpr,
):
    """P tile [M, N] (fp32) from a q tile [M, D] and a K^T tile [D, N]; 0 where not attended."""
    if DOT_FP32:
        s = tl.dot(q, kT, input_precision="ieee")
    else:
        s = tl.dot(q, kT)
    if not SCALE_IN_EXP:
        s = s * score_scale
    mk_ok = row_ok[:, None] & n_ok[None, :]
    if MASK_KIND == 1:
        mk = tl.load(mask_base + offs_m[:, None] * stride_mq + offs_n[None, :] * stride_mk, mask=mk_ok, other=0)
        s = tl.where(mk != 0, s, float("-inf"))
    elif MASK_KIND == 2:
        mk = tl.load(mask_base + offs_m[:, None] * stride_mq + offs_n[None, :] * stride_mk, mask=mk_ok, other=0.0)
        s = s + mk.to(tl.float32)
    valid = mk_ok
    if IS_CAUSAL:
        valid = valid & (offs_n[None, :] <= offs_m[:, None] + causal_off)
    s = tl.where(valid, s, float("-inf"))
    p = tl.math.exp2((s - lse_t[:, None]) * exp_scale)  # lse_t = +inf on dead rows: p = 0
    return tl.where(valid, p, 0.0)


@triton.jit
def _attn_bwd_dkdv_kernel(
    q_ptr, k_ptr, v_ptr, mask_ptr, do_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr,
    Hq, Hkv, KV_GROUP, Lq, Lk, D, Dv,
    stride_qb, stride_qh, stride_ql, stride_qd,
    stride_kb, stride_kh, stride_kl, stride_kd,
    stride_vb, stride_vh, stride_vl, stride_vd,
    stride_mb, stride_mh, stride_mq, stride_mk,
    stride_dob, stride_doh, stride_dol, stride_dod,
    stride_dkb, stride_dkh, stride_dkl, stride_dkd,
    stride_dvb, stride_dvh, stride_dvl, stride_dvd,
    score_scale, exp_scale, lse_mul, scale, causal_off,
    TUNE_LQ, TUNE_LK,
    MASK_KIND: tl.constexpr, SCALE_IN_EXP: tl.constexpr, IS_CAUSAL: tl.constexpr, DOT_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    pid_n = tl.program_id(0)
    bhk = tl.program_id(1)
    b = (bhk // Hkv).to(tl.int64)
    hk = (bhk % Hkv).to(tl.int64)

    offs_n = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D).to(tl.int64)
    offs_dv = tl.arange(0, BLOCK_DV).to(tl.int64)
    n_ok = offs_n < Lk
    d_ok = offs_d < D
    dv_ok = offs_dv < Dv

    k = tl.load(k_ptr + b * stride_kb + hk * stride_kh + offs_n[:, None] * stride_kl + offs_d[None, :] * stride_kd,
                mask=n_ok[:, None] & d_ok[None, :], other=0.0)
    v = tl.load(v_ptr + b * stride_vb + hk * stride_vh + offs_n[:, None] * stride_vl + offs_dv[None, :] * stride_vd,
                mask=n_ok[:, None] & dv_ok[None, :], other=0.0)
    if DOT_FP32:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    kT = tl.trans(k)
    vT = tl.trans(v)

    dk = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    dv = tl.zeros((BLOCK_N, BLOCK_DV), dtype=tl.float32)

    # Causal: query i attends key j iff j <= i + off, so rows < first key - off see none of this block.
    if IS_CAUSAL:
        m_lo = tl.maximum(pid_n * BLOCK_N - causal_off, 0)
        m_lo = (tl.minimum(m_lo, Lq) // BLOCK_M) * BLOCK_M
    else:
        m_lo = 0
    offs_m0 = tl.arange(0, BLOCK_M).to(tl.int64)
    for g in range(0, KV_GROUP):
        h = hk * KV_GROUP + g
        bh = b * Hq + h
        q_base = q_ptr + b * stride_qb + h * stride_qh
        do_base = do_ptr + b * stride_dob + h * stride_doh
        mask_base = mask_ptr + b * stride_mb + h * stride_mh
        for start_m in range(m_lo, Lq, BLOCK_M):
            offs_m = start_m + offs_m0
            row_ok = offs_m < Lq
            q = tl.load(q_base + offs_m[:, None] * stride_ql + offs_d[None, :] * stride_qd,
                        mask=row_ok[:, None] & d_ok[None, :], other=0.0)
            do = tl.load(do_base + offs_m[:, None] * stride_dol + offs_dv[None, :] * stride_dod,
                         mask=row_ok[:, None] & dv_ok[None, :], other=0.0)
            if DOT_FP32:
                q = q.to(tl.float32)
                do = do.to(tl.float32)
            lse = tl.load(lse_ptr + bh * Lq + offs_m, mask=row_ok, other=float("-inf"))
            lse_t = tl.where(lse == float("-inf"), float("inf"), lse * lse_mul)
            delta = tl.load(delta_ptr + bh * Lq + offs_m, mask=row_ok, other=0.0)
            p = _attn_bwd_probs(q, kT, mask_base, offs_m, offs_n, row_ok, n_ok, lse_t,
                                causal_off, score_scale, exp_scale, stride_mq, stride_mk,
                                MASK_KIND, SCALE_IN_EXP, IS_CAUSAL, DOT_FP32)
            if DOT_FP32:
                dv = tl.dot(tl.trans(p), do, dv, input_precision="ieee")
                dp = tl.dot(do, vT, input_precision="ieee")
            else:
                dv = tl.dot(tl.trans(p.to(do.dtype)), do, dv)
                dp = tl.dot(do, vT)
            ds = p * (dp - delta[:, None])
            if DOT_FP32:
                dk = tl.dot(tl.trans(ds), q, dk, input_precision="ieee")
            else:
                dk = tl.dot(tl.trans(ds.to(q.dtype)), q, dk)

    dk = dk * scale
    tl.store(dk_ptr + b * stride_dkb + hk * stride_dkh + offs_n[:, None] * stride_dkl + offs_d[None, :] * stride_dkd,
             dk.to(dk_ptr.dtype.element_ty), mask=n_ok[:, None] & d_ok[None, :])
    tl.store(dv_ptr + b * stride_dvb + hk * stride_dvh + offs_n[:, None] * stride_dvl + offs_dv[None, :] * stride_dvd,
             dv.to(dv_ptr.dtype.element_ty), mask=n_ok[:, None] & dv_ok[None, :])


@triton.jit
def _attn_bwd_dq_kernel(
    q_ptr, k_ptr, v_ptr, mask_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr,
    Hq, KV_GROUP, Lq, Lk, D, Dv,
    stride_qb, stride_qh, stride_ql, stride_qd,
    stride_kb, stride_kh, stride_kl, stride_kd,
    stride_vb, stride_vh, stride_vl, stride_vd,
    stride_mb, stride_mh, stride_mq, stride_mk,
    stride_dob, stride_doh, stride_dol, stride_dod,
    stride_dqb, stride_dqh, stride_dql, stride_dqd,
    score_scale, exp_scale, lse_mul, scale, causal_off,
    TUNE_LQ, TUNE_LK,
    MASK_KIND: tl.constexpr, SCALE_IN_EXP: tl.constexpr, IS_CAUSAL: tl.constexpr, DOT_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // Hq).to(tl.int64)
    h = bh % Hq
    hk = (h // KV_GROUP).to(tl.int64)
    h = h.to(tl.int64)
    bh = bh.to(tl.int64)

    offs_m = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D).to(tl.int64)
    offs_dv = tl.arange(0, BLOCK_DV).to(tl.int64)
    row_ok = offs_m < Lq
    d_ok = offs_d < D
    dv_ok = offs_dv < Dv

    q = tl.load(q_ptr + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_ql + offs_d[None, :] * stride_qd,
                mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    do = tl.load(do_ptr + b * stride_dob + h * stride_doh + offs_m[:, None] * stride_dol
                 + offs_dv[None, :] * stride_dod, mask=row_ok[:, None] & dv_ok[None, :], other=0.0)
    if DOT_FP32:
        q = q.to(tl.float32)
        do = do.to(tl.float32)
    lse = tl.load(lse_ptr + bh * Lq + offs_m, mask=row_ok, other=float("-inf"))
    lse_t = tl.where(lse == float("-inf"), float("inf"), lse * lse_mul)
    delta = tl.load(delta_ptr + bh * Lq + offs_m, mask=row_ok, other=0.0)

    k_base = k_ptr + b * stride_kb + hk * stride_kh
    v_base = v_ptr + b * stride_vb + hk * stride_vh
    mask_base = mask_ptr + b * stride_mb + h * stride_mh
    if IS_CAUSAL:
        last_row = tl.minimum(pid_m * BLOCK_M + BLOCK_M, Lq) - 1
        hi = tl.minimum(tl.maximum(last_row + causal_off + 1, 0), Lk)
    else:
        hi = Lk

    dq = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    offs_n0 = tl.arange(0, BLOCK_N).to(tl.int64)
    for start_n in range(0, hi, BLOCK_N):
        offs_n = start_n + offs_n0
        n_ok = offs_n < Lk
        kT = tl.load(k_base + offs_n[None, :] * stride_kl + offs_d[:, None] * stride_kd,
                     mask=d_ok[:, None] & n_ok[None, :], other=0.0)
        vT = tl.load(v_base + offs_n[None, :] * stride_vl + offs_dv[:, None] * stride_vd,
                     mask=dv_ok[:, None] & n_ok[None, :], other=0.0)
        if DOT_FP32:
            kT = kT.to(tl.float32)
            vT = vT.to(tl.float32)
        p = _attn_bwd_probs(q, kT, mask_base, offs_m, offs_n, row_ok, n_ok, lse_t,
                            causal_off, score_scale, exp_scale, stride_mq, stride_mk,
                            MASK_KIND, SCALE_IN_EXP, IS_CAUSAL, DOT_FP32)
        if DOT_FP32:
            dp = tl.dot(do, vT, input_precision="ieee")
        else:
            dp = tl.dot(do, vT)
        ds = p * (dp - delta[:, None])
        if DOT_FP32:
            dq = tl.dot(ds, tl.trans(kT), dq, input_precision="ieee")
        else:
            dq = tl.dot(ds.to(kT.dtype), tl.trans(kT), dq)

    dq = dq * scale
    tl.store(dq_ptr + b * stride_dqb + h * stride_dqh + offs_m[:, None] * stride_dql + offs_d[None, :] * stride_dqd,
             dq.to(dq_ptr.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])


if _INTERPRET:
    _BWD_META = dict(BLOCK_M=16, BLOCK_N=16)
    _PRE_BLOCK_M = 16
    _dkdv_kernel = _attn_bwd_dkdv_kernel
    _dq_kernel = _attn_bwd_dq_kernel
else:
    _BWD_META = {}
    _PRE_BLOCK_M = 64

    def _bcfg(bm, bn, warps, stages):
        return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=warps, num_stages=stages)

    # kernel -> its measured spills, for tests/triton_resources.py's coverage check
    SPILL_TABLES = {"_attn_bwd_dq_kernel": spills.DQ, "_attn_bwd_dkdv_kernel": spills.DKDV}
    _BWD_KEY = ["TUNE_LQ", "TUNE_LK", "D", "Dv", "MASK_KIND", "SCALE_IN_EXP", "IS_CAUSAL"]

    def _spill_prune(table):
        """early_config_prune: drop the configs ptxas spills for on this GPU at this head dim
        (kernels/attention_spills.py)."""
        def prune(configs, named_args, **kwargs):
            major = spills.launch_major(named_args, kwargs)
            bd = max(kwargs.get("BLOCK_D", 64), kwargs.get("BLOCK_DV", 64))
            kept = [c for c in configs if spills.fits(table, c.kwargs, c.num_warps, c.num_stages, major, bd)]
            return kept or configs
        return prune

    # dK/dV: the key block is the resident tile (dK, dV accumulators), query blocks stream.
    # Registers: resident dk, dv (fp32) and k, v of the key block, plus per query block q, do and the
    # fp32 p, dp, ds. 32 x 64 / 64 x 64 on 4 warps and 32 x 128 / 64 x 128 on 8 warps spilled on sm_80
    # and sm_90 at head dims 64 and 128 (32-1056 B per thread). 32 x 32 on 4 warps spills 8 B at head
    # dim 64 on Hopper with 2 stages, and at 128 on Ampere with 1: each runs where it compiles clean.
    _dkdv_kernel = triton.autotune(
        configs=[_bcfg(32, 32, 4, 2), _bcfg(32, 32, 4, 1), _bcfg(32, 64, 8, 2)],
        key=_BWD_KEY, prune_configs_by={"early_config_prune": _spill_prune(spills.DKDV)},
    )(_attn_bwd_dkdv_kernel)
    # dQ: the query block is resident, key blocks stream. On Ampere 64 x 64 on 4 warps and 128 x 64
    # on 8 sit at the 255-register cap and spill; 64 x 64 on 8 warps and 128 x 32 with one stage
    # compile clean on both generations and stand in for them there.
    _dq_kernel = triton.autotune(
        configs=[_bcfg(64, 32, 4, 2), _bcfg(64, 64, 4, 2), _bcfg(64, 64, 8, 2), _bcfg(128, 32, 8, 2),
                 _bcfg(128, 32, 8, 1), _bcfg(128, 64, 8, 2)],
        key=_BWD_KEY, prune_configs_by={"early_config_prune": _spill_prune(spills.DQ)},
    )(_attn_bwd_dq_kernel)


def attention_bwd(q, k, v, mask, is_causal, causal_bottom_right, scale, out, lse, dout, dlse=None):
    """Fused attention backward: ``(dq, dk, dv)`` in the inputs' dtype (fp32 accumulation).

    Arguments as in :func:`attention_fwd`, plus the forward's ``out [B, Hq, Lq, Dv]`` and ``lse``
    (fp32 [B, Hq, Lq], natural log, -inf on fully masked rows), ``dout`` (like ``out``) and the
    optional ``dlse`` (like ``lse``). Bool and float masks are applied like the forward; no
    gradient is produced for a float mask. Fully masked rows contribute nothing (their dq is 0).
    ``dk``/``dv`` are summed over the query heads of each GQA group.
    """
    B, Hq, Lq, D, Hkv, Lk, Dv = qkv_dims(q, k, v)
    if tuple(out.shape) != (B, Hq, Lq, Dv) or tuple(dout.shape) != (B, Hq, Lq, Dv):
        raise ValueError("llmaccel::attention: out and dout must be [B, Hq, Lq, Dv]")
    if tuple(lse.shape) != (B, Hq, Lq) or (dlse is not None and tuple(dlse.shape) != (B, Hq, Lq)):
        raise ValueError("llmaccel::attention: lse and dlse must be [B, Hq, Lq]")
    device = q.device
    odt = torch.float32 if host_rounds(q.dtype) else q.dtype
    dq = torch.empty((B, Hq, Lq, D), dtype=odt, device=device)
    dk = torch.empty((B, Hkv, Lk, D), dtype=odt, device=device)
    dv = torch.empty((B, Hkv, Lk, Dv), dtype=odt, device=device)
    if B * Hq * Lq == 0 or Lk == 0:
        dq.zero_()
        dk.zero_()
        dv.zero_()
        return dq.to(q.dtype), dk.to(q.dtype), dv.to(q.dtype)
    check_gqa(Hq, Hkv)

    scale, mask_kind, mask_arg, m_strides, scale_in_exp, score_scale, exp_scale, causal_off = launch_params(
        q, mask, scale, is_causal, causal_bottom_right, B, Hq, Lq, Lk, D)
    lse_mul = _LOG2E / exp_scale  # natural-log lse -> units of t
    BLOCK_D = max(16, triton.next_power_of_2(D))
    BLOCK_DV = max(16, triton.next_power_of_2(Dv))
    consts = dict(MASK_KIND=mask_kind, SCALE_IN_EXP=scale_in_exp, IS_CAUSAL=bool(is_causal),
                  DOT_FP32=dot_fp32(q.dtype), BLOCK_D=BLOCK_D, BLOCK_DV=BLOCK_DV, **_BWD_META)
    tune = (triton.next_power_of_2(Lq), triton.next_power_of_2(Lk))

    lse = lse.to(torch.float32).contiguous()
    dlse_c = dlse.to(torch.float32).contiguous() if dlse is not None else None
    delta = torch.empty((B, Hq, Lq), dtype=torch.float32, device=device)

    for b0, b1 in batch_chunks(B, Hq):
        nb = b1 - b0
        qc, kc, vc, oc, doc = q[b0:b1], k[b0:b1], v[b0:b1], out[b0:b1], dout[b0:b1]
        lc, dc = lse[b0:b1], delta[b0:b1]
        dlc = dlse_c[b0:b1] if dlse_c is not None else dc
        dqc, dkc, dvc = dq[b0:b1], dk[b0:b1], dv[b0:b1]
        mc = mask_arg if m_strides[0] == 0 else mask_arg[b0:b1]
        common = (*qc.stride(), *kc.stride(), *vc.stride(), *m_strides, *doc.stride())
        scal = (score_scale, exp_scale, lse_mul, float(scale), causal_off, *tune)

        def launch():
            _attn_bwd_preprocess_kernel[(triton.cdiv(Lq, _PRE_BLOCK_M), nb * Hq)](
                oc, doc, dlc, dc, Hq, Lq, Dv, *oc.stride(), *doc.stride(),
                HAS_DLSE=dlse_c is not None, BLOCK_M=_PRE_BLOCK_M, BLOCK_DV=BLOCK_DV)

            def grid_kv(META):
                return (triton.cdiv(Lk, META["BLOCK_N"]), nb * Hkv)

            _dkdv_kernel[grid_kv](qc, kc, vc, mc, doc, lc, dc, dkc, dvc,
                                  Hq, Hkv, Hq // Hkv, Lq, Lk, D, Dv, *common, *dkc.stride(), *dvc.stride(),
                                  *scal, **consts)

            def grid_q(META):
                return (triton.cdiv(Lq, META["BLOCK_M"]), nb * Hq)

            _dq_kernel[grid_q](qc, kc, vc, mc, doc, lc, dc, dqc,
                               Hq, Hq // Hkv, Lq, Lk, D, Dv, *common, *dqc.stride(), *scal, **consts)

        on_device(device, launch)
    return dq.to(q.dtype), dk.to(q.dtype), dv.to(q.dtype)
