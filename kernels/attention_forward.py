"""Triton attention forward kernel (online softmax over key blocks) and its autotune configs.

One program owns BLOCK_M query rows of one head; the math, tiling and config rules are in ``kernels/attention.py``.
"""

import triton
import triton.language as tl

from . import attention_spills as spills
from ._interpret import INTERPRET as _INTERPRET


@triton.jit
def _attn_key_range(
    acc, l_i, m_i, q,
    k_base, v_base, mask_base,
    offs_m, row_ok, offs_d, offs_dv,
    lo, hi,
    Lk, D, Dv, causal_off, score_scale, exp_scale,
    stride_kl, stride_kd, stride_vl, stride_vd, stride_mq, stride_mk,
    MASK_KIND: tl.constexpr,
    SCALE_IN_EXP: tl.constexpr,
    BOUNDARY: tl.constexpr,
    IS_CAUSAL: tl.constexpr,
    DOT_FP32: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Online-softmax update of (acc, l_i, m_i) over keys [lo, hi), lo a multiple of BLOCK_N.

    BOUNDARY=False: every key in [lo, hi) is < Lk and (if causal) attended by every row of the block,
    and hi - lo is a multiple of BLOCK_N: K/V loads need no key mask. BOUNDARY=True: per-element
    ``j < Lk`` and causal masks.
    """
    offs_n0 = tl.arange(0, BLOCK_N)
    d_ok = offs_d < D
    dv_ok = offs_dv < Dv
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + offs_n0
        offs_n64 = offs_n.to(tl.int64)
        k_ptrs = k_base + offs_n64[None, :] * stride_kl + offs_d[:, None] * stride_kd  # K^T tile [D, N]
        v_ptrs = v_base + offs_n64[:, None] * stride_vl + offs_dv[None, :] * stride_vd  # [N, DV]
        if BOUNDARY:
            n_ok = offs_n < Lk
            k = tl.load(k_ptrs, mask=d_ok[:, None] & n_ok[None, :], other=0.0)
            v = tl.load(v_ptrs, mask=n_ok[:, None] & dv_ok[None, :], other=0.0)
            mk_ok = row_ok[:, None] & n_ok[None, :]
        else:
            k = tl.load(k_ptrs, mask=d_ok[:, None], other=0.0)
            v = tl.load(v_ptrs, mask=dv_ok[None, :], other=0.0)
            mk_ok = row_ok[:, None]

        if DOT_FP32:
            s = tl.dot(q, k.to(tl.float32), input_precision="ieee")  # q is already fp32
        else:
            s = tl.dot(q, k)
        if not SCALE_IN_EXP:
            s = s * score_scale  # natural-log logits

        if MASK_KIND == 1:  # bool (uint8): nonzero = attend
            mk = tl.load(mask_base + offs_m[:, None] * stride_mq + offs_n64[None, :] * stride_mk,
                         mask=mk_ok, other=0)
            s = tl.where(mk != 0, s, float("-inf"))
        elif MASK_KIND == 2:  # float: additive, natural-log units
            mk = tl.load(mask_base + offs_m[:, None] * stride_mq + offs_n64[None, :] * stride_mk,
                         mask=mk_ok, other=0.0)
            s = s + mk.to(tl.float32)

        if BOUNDARY:
            valid = n_ok[None, :]
            if IS_CAUSAL:
                valid = valid & (offs_n64[None, :] <= offs_m[:, None] + causal_off)
            s = tl.where(valid, s, float("-inf"))

        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2((s - m_safe[:, None]) * exp_scale)
        alpha = tl.math.exp2((m_i - m_safe) * exp_scale)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        if DOT_FP32:
            acc = tl.dot(p, v.to(tl.float32), acc, input_precision="ieee")
        else:
            acc = tl.dot(p.to(v.dtype), v, acc)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _attn_fwd_kernel(
    q_ptr, k_ptr, v_ptr, mask_ptr, o_ptr, lse_ptr,
    acc_ws_ptr, m_ws_ptr, l_ws_ptr,
    Hq, KV_GROUP, Lq, Lk, D, Dv,
    stride_qb, stride_qh, stride_ql, stride_qd,
    stride_kb, stride_kh, stride_kl, stride_kd,
    stride_vb, stride_vh, stride_vl, stride_vd,
    stride_mb, stride_mh, stride_mq, stride_mk,
    stride_ob, stride_oh, stride_ol, stride_od,
    score_scale, exp_scale, causal_off,
    N_SPLITS,
    TUNE_LQ, TUNE_LK,  # autotune keys only (power-of-two buckets of Lq, Lk)
    MASK_KIND: tl.constexpr,
    SCALE_IN_EXP: tl.constexpr,
    IS_CAUSAL: tl.constexpr,
    SPLIT: tl.constexpr,
    DOT_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr,
):
    LN2: tl.constexpr = 0.6931471805599453
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // Hq).to(tl.int64)
    h = bh % Hq
    hk = (h // KV_GROUP).to(tl.int64)
    h = h.to(tl.int64)

    offs_m = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D).to(tl.int64)
    offs_dv = tl.arange(0, BLOCK_DV).to(tl.int64)
    row_ok = offs_m < Lq

    q_base = q_ptr + b * stride_qb + h * stride_qh
    k_base = k_ptr + b * stride_kb + hk * stride_kh
    v_base = v_ptr + b * stride_vb + hk * stride_vh
    mask_base = mask_ptr + b * stride_mb + h * stride_mh

    q = tl.load(q_base + offs_m[:, None] * stride_ql + offs_d[None, :] * stride_qd,
                mask=row_ok[:, None] & (offs_d < D)[None, :], other=0.0)
    if DOT_FP32:
        q = q.to(tl.float32)  # once, not per key block

    # ---- key range of this query block (causal block skipping) --------------
    if IS_CAUSAL:
        first_row = pid_m * BLOCK_M
        last_row = tl.minimum(first_row + BLOCK_M, Lq) - 1
        hi = tl.minimum(tl.maximum(last_row + causal_off + 1, 0), Lk)
        full = tl.minimum(tl.maximum(first_row + causal_off + 1, 0), hi)
    else:
        hi = Lk
        full = Lk
    full = (full // BLOCK_N) * BLOCK_N  # full >= 0: floor division
    if SPLIT:
        split = tl.program_id(2)
        per_split = tl.cdiv(tl.cdiv(hi, BLOCK_N), N_SPLITS) * BLOCK_N
        s_lo = split * per_split
        s_hi = tl.minimum(s_lo + per_split, hi)
        lo1 = s_lo
        hi1 = tl.minimum(full, s_hi)
        lo2 = tl.maximum(full, s_lo)
        hi2 = s_hi
    else:
        lo1 = 0
        hi1 = full
        lo2 = full
        hi2 = hi

    acc = tl.zeros((BLOCK_M, BLOCK_DV), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)

    acc, l_i, m_i = _attn_key_range(
        acc, l_i, m_i, q, k_base, v_base, mask_base, offs_m, row_ok, offs_d, offs_dv,
        lo1, hi1, Lk, D, Dv, causal_off, score_scale, exp_scale,
        stride_kl, stride_kd, stride_vl, stride_vd, stride_mq, stride_mk,
        MASK_KIND, SCALE_IN_EXP, False, IS_CAUSAL, DOT_FP32, BLOCK_N)
    acc, l_i, m_i = _attn_key_range(
        acc, l_i, m_i, q, k_base, v_base, mask_base, offs_m, row_ok, offs_d, offs_dv,
        lo2, hi2, Lk, D, Dv, causal_off, score_scale, exp_scale,
        stride_kl, stride_kd, stride_vl, stride_vd, stride_mq, stride_mk,
        MASK_KIND, SCALE_IN_EXP, True, IS_CAUSAL, DOT_FP32, BLOCK_N)

    dv_ok = offs_dv < Dv
    if SPLIT:
        # Partials: m/l fp32 [N_SPLITS, B*Hq, Lq], acc fp32 [N_SPLITS, B*Hq, Lq, Dv] (contiguous).
        rows = (tl.program_id(2).to(tl.int64) * tl.num_programs(1) + bh) * Lq + offs_m
        tl.store(m_ws_ptr + rows, m_i, mask=row_ok)
        tl.store(l_ws_ptr + rows, l_i, mask=row_ok)
        tl.store(acc_ws_ptr + rows[:, None] * Dv + offs_dv[None, :], acc,
                 mask=row_ok[:, None] & dv_ok[None, :])
    else:
        has = l_i > 0.0
        out = acc / tl.where(has, l_i, 1.0)[:, None]  # l == 0 -> acc == 0 -> out == 0
        lse = tl.where(has, (m_i * exp_scale + tl.math.log2(tl.where(has, l_i, 1.0))) * LN2, float("-inf"))
        o_base = o_ptr + b * stride_ob + h * stride_oh
        tl.store(o_base + offs_m[:, None] * stride_ol + offs_dv[None, :] * stride_od,
                 out.to(o_ptr.dtype.element_ty), mask=row_ok[:, None] & dv_ok[None, :])
        tl.store(lse_ptr + bh.to(tl.int64) * Lq + offs_m, lse, mask=row_ok)


if _INTERPRET:
    # Triton's CPU interpreter: one small config, plain launch (no autotune).
    INTERPRET_META = dict(BLOCK_M=16, BLOCK_N=16)
    fwd_kernel = _attn_fwd_kernel
    split_kernel = _attn_fwd_kernel
else:
    INTERPRET_META = {}

    def _cfg(bm, bn, warps, stages):
        return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=warps, num_stages=stages)

    def _prune(configs, named_args, **kwargs):
        """Drop configs that cannot fit: a rough shared-memory / register (no spills) model.

        Calibrated on sm_90 compiles: Triton multi-buffers K/V (and mask) tiles ``num_stages - 1``
        times and adds layout-conversion scratch for large head dims, so this is only a coarse
        filter; configs that still overflow are skipped by the autotuner (OutOfResources).
        """
        esize = named_args["q_ptr"].element_size()
        bd = kwargs.get("BLOCK_D", 64)
        bdv = kwargs.get("BLOCK_DV", 64)
        mask_kind = kwargs.get("MASK_KIND", 0)
        mesize = named_args["mask_ptr"].element_size() if mask_kind else 0

        def smem(c):
            bm, bn = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]
            tile = bn * (bd + bdv) * esize + bm * bn * mesize
            return tile, max(c.num_stages - 1, 1) * tile

        def regs(c):
            """32-bit registers per thread for the tiles live in the key loop: fp32 acc [M, DV] and scores
            [M, N]; q [M, D], p [M, N] and the K^T / V operand tiles [D, N] / [N, DV] in the input dtype.

            Calibrated on sm_80 / sm_90 compiles (tests/test_triton_compile.py): configs estimated at 256
            or more spilled (128 x 64 and 128 x 128 on 4 warps, 64 x 128 on 4 warps and 128 x 128 on 8
            warps at D = 128) or sat at the 255-register cap; every config kept compiles without spills.
            """
            bm, bn = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]
            fp32 = bm * bdv + bm * bn
            narrow = bm * bd + bm * bn + bd * bn + bn * bdv
            return (fp32 + narrow * esize // 4) // (32 * c.num_warps)

        major = spills.launch_major(named_args, kwargs)
        kept = [c for c in configs
                if smem(c)[0] <= 64 * 1024 and smem(c)[1] <= 160 * 1024 and regs(c) <= 240
                and spills.fits(spills.FWD, c.kwargs, c.num_warps, c.num_stages, major, bd)]
        return kept or [min(configs, key=lambda c: smem(c)[1])]

    # kernel -> its measured spills, for tests/triton_resources.py's coverage check
    SPILL_TABLES = {"_attn_fwd_kernel": spills.FWD}
    _FWD_CONFIGS = [
        _cfg(bm, bn, w, s)
        for bm in (64, 128)
        for bn in (32, 64, 128)
        for w in (4, 8)
        for s in (2, 3, 4)
        if not (bm == 64 and w == 8 and bn == 32)
        and not (bm == 128 and bn == 128 and w == 4)  # spills at any head dim >= 32 (see _prune)
    ]
    # Decode (Lq <= 16): one 16-row query tile, parallelism comes from the splits.
    _SPLIT_CONFIGS = [_cfg(16, bn, w, s) for bn in (32, 64, 128) for w in (4, 8) for s in (2, 3, 4)
                      if not (bn == 32 and w == 8)]
    _KEY = ["TUNE_LQ", "TUNE_LK", "D", "Dv", "MASK_KIND", "SCALE_IN_EXP", "IS_CAUSAL"]
    fwd_kernel = triton.autotune(
        configs=_FWD_CONFIGS, key=_KEY, prune_configs_by={"early_config_prune": _prune}
    )(_attn_fwd_kernel)
    split_kernel = triton.autotune(
        configs=_SPLIT_CONFIGS, key=_KEY + ["N_SPLITS"], prune_configs_by={"early_config_prune": _prune}
    )(_attn_fwd_kernel)
