"""Triton fused attention forward (FlashAttention-2 style) with a split-KV decode path.

Math
----
The contract is SDPA's (see the shared spec, ``llmaccel/ops/attention.py``), layout ``[B, H, L, D]``::

    q   : [B, Hq,  Lq, D]     fp32 / fp16 / bf16, any strides
    k   : [B, Hkv, Lk, D]     same dtype, any strides; Hq % Hkv == 0 (GQA/MQA)
    v   : [B, Hkv, Lk, Dv]    same dtype, any strides
    mask: None, bool (True = attend) or float (added to the scores), a 4-D view
          broadcast to [B, Hq, Lq, Lk] (stride 0 on broadcast dims)

    s_ij   = scale * q_i . k_j  (+ mask_ij)      query head h reads kv head h // (Hq // Hkv)
    out_i  = sum_j softmax_j(s_ij) v_j           over attended j only; out has q's dtype
    lse_i  = log(sum_j exp(s_ij))                fp32 [B, Hq, Lq], natural log

Key j is attended by query i unless the bool mask is False (or the float mask is -inf), and, when
causal, ``j <= i + off`` with ``off = 0`` (top-left, SDPA's ``is_causal``) or ``off = Lk - Lq``
(``causal_bottom_right``, KV-cache decoding). Rows with no attended key give ``out = 0`` and
``lse = -inf`` (never NaN).

The softmax is computed online in fp32 with ``exp2``, ``log2(e)`` folded into the exponent's
scale ``c``. The kernel works on scores ``t`` with ``exp(s) = 2^(c * t)``:

    no float mask, scale > 0:  t = q . k                     c = scale * log2(e)
    float mask (or scale <= 0): t = scale * (q . k) + mask    c = log2(e)

Per query row the program keeps the running max ``m`` of ``t``, the running sum
``l = sum 2^(c (t - m))`` and the unnormalised accumulator ``acc = sum 2^(c (t - m)) v``; for
each key block::

    m_new = max(m, rowmax(t))        m_safe = m_new, or 0 where m_new == -inf (row masked so far)
    p     = 2^(c (t - m_safe))       (masked entries are -inf -> p = 0)
    alpha = 2^(c (m - m_safe))       (m == -inf -> alpha = 0: nothing to rescale)
    l     = alpha * l + rowsum(p);   acc = alpha * acc + p @ v;   m = m_new

and at the end ``out = acc / l`` and ``lse = ln(2) * (c m + log2(l))``, or ``out = 0``,
``lse = -inf`` where ``l == 0``. ``m_safe`` is what keeps fully masked rows NaN-free:
``-inf - (-inf)`` never occurs. Subtracting the max *before* scaling (``c (t - m)`` rather than
the tutorial's ``c t - c m``) keeps the exponent's argument small, so it carries no rounding error
of the large logits ``c t`` (the tutorial form is only as accurate when the compiler contracts
it into an FMA; the CPU interpreter does not): with x50 inputs (logits ~ 1e4) this is what keeps
fp32 results as accurate as torch's SDPA.

Both matmuls accumulate in fp32. fp16/bf16 inputs use the tensor cores directly (``p`` is rounded
to v's dtype for ``p @ v``, as in FlashAttention); fp32 inputs use an IEEE fp32 ``tl.dot``
(``input_precision="ieee"``: TF32 would lose 13 mantissa bits). Triton's CPU interpreter has no
bf16 arithmetic, so under ``TRITON_INTERPRET=1`` bf16 tiles are upcast to fp32 before each dot
(and, since its fp32 -> bf16 cast truncates, bf16 outputs are stored in fp32 and rounded by torch).

Tiling
------
Forward kernel: grid ``(cdiv(Lq, BLOCK_M), B * Hq, n_splits)``; one program owns ``BLOCK_M`` query
rows of one (batch, query head) and keeps its q tile ``[BLOCK_M, BLOCK_D]``, ``acc
[BLOCK_M, BLOCK_DV]``, ``m`` and ``l`` in registers while it streams K^T tiles ``[BLOCK_D, BLOCK_N]``
and V tiles ``[BLOCK_N, BLOCK_DV]``. Consecutive programs along axis 0 share the same K/V (L2 reuse).
K/V pointers come from the query head's kv head (``h // (Hq // Hkv)``): GQA never copies K/V.
Head dims are padded to ``BLOCK_D = next_pow2(D)`` (>= 16, so 80/96/112 -> 128, up to 256) with
masked loads (``other=0`` adds nothing to q . k, and padded output columns are not stored).

Key range per query block (causal block skipping): rows ``[r0, r1]`` of the block attend at most
keys ``< hi = min(Lk, r1 + off + 1)`` (blocks past ``hi`` are never loaded), and every row attends
all keys ``< full = min(hi, r0 + off + 1)``. The key loop runs in two phases: ``[0, full')`` with
``full' = full`` rounded down to ``BLOCK_N`` needs no causal mask and no key-bound mask (unmasked
K/V loads, the common case), and ``[full', hi)`` (the diagonal blocks and the ragged ``Lk`` tail)
applies the per-element causal and ``j < Lk`` masks. Without causal, the second phase is just the
``Lk % BLOCK_N`` tail. The optional mask tensor is read through its four strides (0 on broadcast
dims) in both phases; bool masks are read as uint8.

Split-KV decode (Flash-Decoding): for short queries over a long KV (decode, ``Lq <= 16``) the
grid above has only ``B * Hq`` programs, far fewer than the GPU has SMs, each streaming all of Lk.
The same kernel is then launched with a third grid axis of ``n_splits`` programs per query block:
split ``s`` processes a contiguous range of key blocks of ``[0, hi)`` (the same two-phase loop,
intersected with its range) and writes its partial ``(m, l, acc)`` to fp32 workspaces
``[n_splits, B*Hq, Lq]`` / ``[n_splits, B*Hq, Lq, Dv]``. A combine kernel (one program per query
row) merges them in a fixed order (deterministic, no atomics)::

    M = max_s m_s (0 if all -inf);  w_s = 2^(c (m_s - M));  L = sum_s w_s l_s
    out = sum_s w_s acc_s / L;      lse = ln(2) * (c M + log2(L))   (out = 0, lse = -inf if L == 0)

``attention_fwd`` picks ``n_splits`` on a GPU when ``Lq <= 16`` and ``Lk >= 1024`` and the plain
grid would leave SMs idle (each split keeps >= 256 keys); ``split_kv=`` forces a number of splits
(the interpreter tests use it at small sizes; the interpreter never splits on its own).

Addresses are computed in int64 (batch/head/row/column offsets are cast before they meet strides),
so large tensors and transposed views (e.g. ``[B, L, H, D].transpose(1, 2)``) do not overflow.
Every operand is addressed through runtime strides: no ``.contiguous()`` copies.

Configs
-------
On a GPU ``triton.autotune`` picks among BLOCK_M in {64, 128}, BLOCK_N in {32, 64, 128}, 4/8 warps,
2-4 stages (decode split path: BLOCK_M = 16), keyed on (Lq, Lk) bucketed to powers of two (so a
growing KV cache does not re-tune at every step) and (D, Dv); configs whose K/V pipeline would not
obviously cannot fit in shared memory or whose live tiles would spill registers are pruned before
benchmarking (the autotuner skips any remaining one that runs out of resources; the register model
is checked against sm_80 / sm_90 compiles by tests/test_triton_compile.py). Under
``TRITON_INTERPRET=1`` a single small config is used (BLOCK_M = 16, BLOCK_N = 16, 1 stage).

Input validation (dtypes, devices, enable_gqa, mask shape, is_causal with a mask) lives in
``llmaccel/ops/attention.py``; this launcher only checks what it needs to index safely.
"""

import math
import os

import torch
import triton
import triton.language as tl

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

_LOG2E = 1.4426950408889634

# Split-KV dispatch thresholds (GPU only; see attention_fwd).
_SPLIT_MAX_LQ = 16
_SPLIT_MIN_LK = 1024
_SPLIT_MIN_KEYS = 256  # keys per split, at least
_MAX_SPLITS = 64  # the combine kernel holds a [next_pow2(n_splits), BLOCK_DV] tile
# CUDA grid axes 1 and 2 are limited to 65535 programs: B * Hq is chunked over the batch beyond it.
_MAX_GRID_YZ = 65535


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


@triton.jit
def _attn_split_combine_kernel(
    acc_ws_ptr, m_ws_ptr, l_ws_ptr, o_ptr, lse_ptr,
    Hq, Lq, Dv, BH, N_SPLITS, exp_scale,
    stride_ob, stride_oh, stride_ol, stride_od,
    BLOCK_S: tl.constexpr,
    BLOCK_DV: tl.constexpr,
):
    LN2: tl.constexpr = 0.6931471805599453
    row = tl.program_id(0).to(tl.int64)  # over B*Hq*Lq; lse is [B*Hq, Lq] contiguous
    bh = row // Lq
    i = row % Lq
    b = bh // Hq
    h = bh % Hq

    offs_s = tl.arange(0, BLOCK_S)
    s_ok = offs_s < N_SPLITS
    idx = offs_s.to(tl.int64) * BH * Lq + row
    m = tl.load(m_ws_ptr + idx, mask=s_ok, other=float("-inf"))
    l = tl.load(l_ws_ptr + idx, mask=s_ok, other=0.0)
    m_max = tl.max(m, 0)
    m_safe = tl.where(m_max == float("-inf"), 0.0, m_max)
    w = tl.math.exp2((m - m_safe) * exp_scale)  # splits with m == -inf (nothing attended) weigh 0
    l_tot = tl.sum(w * l, 0)

    offs_dv = tl.arange(0, BLOCK_DV).to(tl.int64)
    dv_ok = offs_dv < Dv
    acc = tl.load(acc_ws_ptr + idx[:, None] * Dv + offs_dv[None, :],
                  mask=s_ok[:, None] & dv_ok[None, :], other=0.0)
    o = tl.sum(acc * w[:, None], 0)
    has = l_tot > 0.0
    l_div = tl.where(has, l_tot, 1.0)
    o = o / l_div
    lse = tl.where(has, (m_safe * exp_scale + tl.math.log2(l_div)) * LN2, float("-inf"))
    tl.store(o_ptr + b * stride_ob + h * stride_oh + i * stride_ol + offs_dv * stride_od,
             o.to(o_ptr.dtype.element_ty), mask=dv_ok)
    tl.store(lse_ptr + row, lse)


if _INTERPRET:
    # Triton's CPU interpreter: one small config, plain launch (no autotune).
    _INTERPRET_META = dict(BLOCK_M=16, BLOCK_N=16)
    _fwd_kernel = _attn_fwd_kernel
    _split_kernel = _attn_fwd_kernel
else:
    _INTERPRET_META = {}

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

        kept = [c for c in configs
                if smem(c)[0] <= 64 * 1024 and smem(c)[1] <= 160 * 1024 and regs(c) <= 240]
        return kept or [min(configs, key=lambda c: smem(c)[1])]

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
    _fwd_kernel = triton.autotune(
        configs=_FWD_CONFIGS, key=_KEY, prune_configs_by={"early_config_prune": _prune}
    )(_attn_fwd_kernel)
    _split_kernel = triton.autotune(
        configs=_SPLIT_CONFIGS, key=_KEY + ["N_SPLITS"], prune_configs_by={"early_config_prune": _prune}
    )(_attn_fwd_kernel)


def _sm_count(device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def _auto_splits(bh: int, Lq: int, Lk: int, device) -> int:
    """Number of KV splits for the decode path (1 = plain kernel). Never splits under the interpreter."""
    if _INTERPRET or device.type != "cuda" or Lq > _SPLIT_MAX_LQ or Lk < _SPLIT_MIN_LK:
        return 1
    programs = bh * triton.cdiv(Lq, 16)
    sms = _sm_count(device)
    if programs >= sms:
        return 1
    splits = min(triton.cdiv(2 * sms, programs), Lk // _SPLIT_MIN_KEYS, _MAX_SPLITS)
    return max(splits, 1)


def _mask_strides(mask: torch.Tensor, shape) -> tuple:
    """Strides of ``mask`` broadcast to the 4-D ``shape`` (0 on broadcast dims)."""
    if mask.dim() > 4:
        raise ValueError(f"llmaccel::attention: attn_mask must have at most 4 dims, got {mask.dim()}")
    sizes = [1] * (4 - mask.dim()) + list(mask.shape)
    strides = [0] * (4 - mask.dim()) + list(mask.stride())
    out = []
    for size, stride, want in zip(sizes, strides, shape):
        if size == want and size != 1:
            out.append(stride)
        elif size == 1:
            out.append(0)
        else:
            raise ValueError(
                f"llmaccel::attention: attn_mask of shape {tuple(mask.shape)} does not broadcast to {tuple(shape)}")
    return tuple(out)


def _launch_params(q, mask, scale, is_causal, causal_bottom_right, B, Hq, Lq, Lk, D):
    """What the forward and backward kernels share: the resolved scale, mask kind/argument/strides, score and
    exp scales, causal offset.

    Scores t satisfy exp(s) = 2^(exp_scale * t): the scale rides in the
    exponent unless a float mask (natural-log units) must be added to the
    scaled logits, or a non-positive scale would turn the running max of
    q . k into a min.
    """
    if scale is None:
        scale = 1.0 / math.sqrt(D) if D > 0 else 1.0
    if mask is None:
        mask_kind, mask_arg, m_strides = 0, q, (0, 0, 0, 0)
    else:
        m_strides = _mask_strides(mask, (B, Hq, Lq, Lk))
        if mask.dtype == torch.bool:
            mask_kind, mask_arg = 1, mask.view(torch.uint8)
        elif mask.is_floating_point():
            mask_kind, mask_arg = 2, mask
        else:
            raise ValueError(f"llmaccel::attention: attn_mask must be bool or float, got {mask.dtype}")
    scale_in_exp = mask_kind != 2 and scale > 0
    score_scale = 1.0 if scale_in_exp else float(scale)
    exp_scale = float(scale) * _LOG2E if scale_in_exp else _LOG2E
    causal_off = (Lk - Lq if causal_bottom_right else 0) if is_causal else 0
    return scale, mask_kind, mask_arg, m_strides, scale_in_exp, score_scale, exp_scale, causal_off


def attention_fwd(q, k, v, mask=None, is_causal=False, causal_bottom_right=False, scale=None,
                  split_kv: int | None = None):
    """Fused attention forward: returns ``(out [B, Hq, Lq, Dv] in q's dtype, lse fp32 [B, Hq, Lq])``.

    ``q [B, Hq, Lq, D]``, ``k [B, Hkv, Lk, D]``, ``v [B, Hkv, Lk, Dv]``: any strides (no copies).
    ``mask``: None, bool (True = attend) or float (additive), broadcastable to ``[B, Hq, Lq, Lk]``.
    ``is_causal``: top-left aligned (SDPA); with ``causal_bottom_right`` key j is attended by query i
    iff ``j <= i + Lk - Lq``. ``scale`` defaults to ``1 / sqrt(D)``.
    ``split_kv``: None picks the split-KV (Flash-Decoding) path automatically on a GPU for
    ``Lq <= 16`` and ``Lk >= 1024``; an int forces that many KV splits (1 = plain kernel; capped
    at 64). Splits with no key in their range are harmless (they contribute weight 0).
    """
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError("llmaccel::attention: q, k and v must be 4-D [B, H, L, D]")
    B, Hq, Lq, D = q.shape
    Bk, Hkv, Lk, Dk = k.shape
    Dv = v.shape[3]
    if Bk != B or Dk != D or tuple(v.shape[:3]) != (B, Hkv, Lk):
        raise ValueError(f"llmaccel::attention: shape mismatch q {tuple(q.shape)}, k {tuple(k.shape)}, "
                         f"v {tuple(v.shape)}")
    if split_kv is not None and int(split_kv) < 1:
        raise ValueError(f"llmaccel::attention: split_kv must be >= 1, got {split_kv}")

    device = q.device
    # The interpreter's fp32 -> bf16 cast truncates (a GPU rounds to nearest even): under
    # TRITON_INTERPRET=1 bf16 results are written in fp32 and rounded by torch at the end.
    host_round = _INTERPRET and q.dtype == torch.bfloat16
    out = torch.empty((B, Hq, Lq, Dv), dtype=torch.float32 if host_round else q.dtype, device=device)
    lse = torch.empty((B, Hq, Lq), dtype=torch.float32, device=device)
    if B * Hq * Lq == 0:
        return out.to(q.dtype), lse
    if Hkv == 0 or Hq % Hkv != 0:
        raise ValueError(f"llmaccel::attention: Hq ({Hq}) must be a multiple of Hkv ({Hkv})")
    if Lk == 0:  # nothing to attend: every row is fully masked
        out.zero_()
        lse.fill_(float("-inf"))
        return out.to(q.dtype), lse

    scale, mask_kind, mask_arg, m_strides, scale_in_exp, score_scale, exp_scale, causal_off = _launch_params(
        q, mask, scale, is_causal, causal_bottom_right, B, Hq, Lq, Lk, D)

    if q.dtype == torch.float16:
        dot_fp32 = False
    elif q.dtype == torch.bfloat16:
        dot_fp32 = _INTERPRET  # the interpreter has no bf16 arithmetic
    else:
        dot_fp32 = True

    if split_kv is not None:
        n_splits = min(int(split_kv), _MAX_SPLITS)
    else:
        n_splits = _auto_splits(B * Hq, Lq, Lk, device)
    BLOCK_D = max(16, triton.next_power_of_2(D))
    BLOCK_DV = max(16, triton.next_power_of_2(Dv))
    consts = dict(
        MASK_KIND=mask_kind, SCALE_IN_EXP=scale_in_exp, IS_CAUSAL=bool(is_causal),
        SPLIT=n_splits > 1, DOT_FP32=dot_fp32, BLOCK_D=BLOCK_D, BLOCK_DV=BLOCK_DV, **_INTERPRET_META,
    )
    tune = (triton.next_power_of_2(Lq), triton.next_power_of_2(Lk))

    # Chunk the batch so that B * Hq fits the CUDA grid's axis 1 (views: no copies).
    b_chunk = max(1, min(B, _MAX_GRID_YZ // Hq))
    for b0 in range(0, B, b_chunk):
        b1 = min(B, b0 + b_chunk)
        nb = b1 - b0
        qc, kc, vc, oc, lc = q[b0:b1], k[b0:b1], v[b0:b1], out[b0:b1], lse[b0:b1]
        # A mask with a batch stride is 4-D with size B in dim 0; otherwise it is batch-broadcast.
        mc = mask_arg if m_strides[0] == 0 else mask_arg[b0:b1]
        args = (
            Hq, Hq // Hkv, Lq, Lk, D, Dv,
            *qc.stride(), *kc.stride(), *vc.stride(), *m_strides, *oc.stride(),
            score_scale, exp_scale, causal_off, n_splits, *tune,
        )
        bh = nb * Hq

        def launch():
            if n_splits == 1:
                def grid(META):
                    return (triton.cdiv(Lq, META["BLOCK_M"]), bh, 1)

                _fwd_kernel[grid](qc, kc, vc, mc, oc, lc, lc, lc, lc, *args, **consts)
                return
            acc_ws = torch.empty((n_splits, bh, Lq, Dv), dtype=torch.float32, device=device)
            m_ws = torch.empty((n_splits, bh, Lq), dtype=torch.float32, device=device)
            l_ws = torch.empty((n_splits, bh, Lq), dtype=torch.float32, device=device)

            def grid(META):
                return (triton.cdiv(Lq, META["BLOCK_M"]), bh, n_splits)

            _split_kernel[grid](qc, kc, vc, mc, oc, lc, acc_ws, m_ws, l_ws, *args, **consts)
            block_s = triton.next_power_of_2(n_splits)
            _attn_split_combine_kernel[(bh * Lq,)](
                acc_ws, m_ws, l_ws, oc, lc,
                Hq, Lq, Dv, bh, n_splits, exp_scale, *oc.stride(),
                BLOCK_S=block_s, BLOCK_DV=BLOCK_DV, num_warps=4 if block_s * BLOCK_DV <= 4096 else 8,
            )

        if q.is_cuda:
            with torch.cuda.device(device):
                launch()
        else:
            launch()
    return out.to(q.dtype), lse


# ==================================================================================================
# Backward (FlashAttention-2 style)
# ==================================================================================================
#
# Same conventions as the forward: scores t with exp(s) = 2^(exp_scale * t) (t = q . k when the scale
# rides in the exponent, else t = scale * q . k + mask), so with lse in natural log
#
#     P = exp(s - lse) = 2^(exp_scale * (t - lse_t)),   lse_t = lse * log2(e) / exp_scale
#
# (subtracting before scaling, like the forward). Fully masked rows have lse = -inf: lse_t is
# replaced by +inf there so that P = 0, hence dS = 0 and every gradient of that row is 0.
#
#     delta_i = rowsum(dO_i * O_i) - dlse_i                      (preprocess kernel, fp32)
#     dS      = P * (dO V^T - delta)                             (natural-log units)
#     dV      = P^T dO     dK = scale * dS^T Q     dQ = scale * dS K
#
# dK/dV kernel: one program per (key block, b * Hkv); it loops over the query heads of its GQA group
# and their query blocks (from the first block that can attend its keys when causal), so dK/dV are
# written once, without atomics. dQ kernel: one program per (query block, b * Hq) over the key
# blocks it can attend. Masks (bool or float: no float-mask gradient) are read through strides.


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

    _BWD_KEY = ["TUNE_LQ", "TUNE_LK", "D", "Dv", "MASK_KIND", "SCALE_IN_EXP", "IS_CAUSAL"]
    # dK/dV: the key block is the resident tile (dK, dV accumulators), query blocks stream.
    # Registers: resident dk, dv (fp32) and k, v of the key block, plus per query block q, do and the
    # fp32 p, dp, ds. 32 x 64 / 64 x 64 on 4 warps and 32 x 128 / 64 x 128 on 8 warps spilled on sm_80
    # and sm_90 at head dims 64 and 128 (32-1056 B per thread); these two compile without spills at
    # head dim 128 (tests/test_triton_compile.py).
    _dkdv_kernel = triton.autotune(
        configs=[_bcfg(32, 32, 4, 2), _bcfg(32, 64, 8, 2)],
        key=_BWD_KEY,
    )(_attn_bwd_dkdv_kernel)
    # dQ: the query block is resident, key blocks stream.
    _dq_kernel = triton.autotune(
        configs=[_bcfg(64, 32, 4, 2), _bcfg(64, 64, 4, 2), _bcfg(128, 32, 8, 2), _bcfg(128, 64, 8, 2)],
        key=_BWD_KEY,
    )(_attn_bwd_dq_kernel)


def attention_bwd(q, k, v, mask, is_causal, causal_bottom_right, scale, out, lse, dout, dlse=None):
    """Fused attention backward: ``(dq, dk, dv)`` in the inputs' dtype (fp32 accumulation).

    Arguments as in :func:`attention_fwd`, plus the forward's ``out [B, Hq, Lq, Dv]`` and ``lse``
    (fp32 [B, Hq, Lq], natural log, -inf on fully masked rows), ``dout`` (like ``out``) and the
    optional ``dlse`` (like ``lse``). Bool and float masks are applied like the forward; no
    gradient is produced for a float mask. Fully masked rows contribute nothing (their dq is 0).
    ``dk``/``dv`` are summed over the query heads of each GQA group.
    """
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError("llmaccel::attention: q, k and v must be 4-D [B, H, L, D]")
    B, Hq, Lq, D = q.shape
    Bk, Hkv, Lk, Dk = k.shape
    Dv = v.shape[3]
    if Bk != B or Dk != D or tuple(v.shape[:3]) != (B, Hkv, Lk):
        raise ValueError(f"llmaccel::attention: shape mismatch q {tuple(q.shape)}, k {tuple(k.shape)}, "
                         f"v {tuple(v.shape)}")
    if tuple(out.shape) != (B, Hq, Lq, Dv) or tuple(dout.shape) != (B, Hq, Lq, Dv):
        raise ValueError("llmaccel::attention: out and dout must be [B, Hq, Lq, Dv]")
    if tuple(lse.shape) != (B, Hq, Lq) or (dlse is not None and tuple(dlse.shape) != (B, Hq, Lq)):
        raise ValueError("llmaccel::attention: lse and dlse must be [B, Hq, Lq]")
    device = q.device
    host_round = _INTERPRET and q.dtype == torch.bfloat16  # see attention_fwd
    odt = torch.float32 if host_round else q.dtype
    dq = torch.empty((B, Hq, Lq, D), dtype=odt, device=device)
    dk = torch.empty((B, Hkv, Lk, D), dtype=odt, device=device)
    dv = torch.empty((B, Hkv, Lk, Dv), dtype=odt, device=device)
    if B * Hq * Lq == 0 or Lk == 0:
        dq.zero_()
        dk.zero_()
        dv.zero_()
        return dq.to(q.dtype), dk.to(q.dtype), dv.to(q.dtype)
    if Hkv == 0 or Hq % Hkv != 0:
        raise ValueError(f"llmaccel::attention: Hq ({Hq}) must be a multiple of Hkv ({Hkv})")

    scale, mask_kind, mask_arg, m_strides, scale_in_exp, score_scale, exp_scale, causal_off = _launch_params(
        q, mask, scale, is_causal, causal_bottom_right, B, Hq, Lq, Lk, D)
    lse_mul = _LOG2E / exp_scale  # natural-log lse -> units of t
    if q.dtype == torch.float16:
        dot_fp32 = False
    elif q.dtype == torch.bfloat16:
        dot_fp32 = _INTERPRET
    else:
        dot_fp32 = True
    BLOCK_D = max(16, triton.next_power_of_2(D))
    BLOCK_DV = max(16, triton.next_power_of_2(Dv))
    consts = dict(MASK_KIND=mask_kind, SCALE_IN_EXP=scale_in_exp, IS_CAUSAL=bool(is_causal), DOT_FP32=dot_fp32,
                  BLOCK_D=BLOCK_D, BLOCK_DV=BLOCK_DV, **_BWD_META)
    tune = (triton.next_power_of_2(Lq), triton.next_power_of_2(Lk))

    lse = lse.to(torch.float32).contiguous()
    dlse_c = dlse.to(torch.float32).contiguous() if dlse is not None else None
    delta = torch.empty((B, Hq, Lq), dtype=torch.float32, device=device)

    b_chunk = max(1, min(B, _MAX_GRID_YZ // Hq))
    for b0 in range(0, B, b_chunk):
        b1 = min(B, b0 + b_chunk)
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

        if q.is_cuda:
            with torch.cuda.device(device):
                launch()
        else:
            launch()
    return dq.to(q.dtype), dk.to(q.dtype), dv.to(q.dtype)
