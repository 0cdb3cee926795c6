"""Triton fused attention: the forward launcher (FlashAttention-2 style, split-KV decode) and the design.

The backward launcher ``attention_bwd`` lives in ``attention_backward.py`` and is re-exported here.

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

import torch
import triton

from . import attention_forward as _fwd
from .attention_backward import attention_bwd  # noqa: F401  (the op layer and tests reach both launchers here)
from .attention_common import batch_chunks, check_gqa, dot_fp32, host_rounds, launch_params, on_device, qkv_dims
from .attention_decode import MAX_SPLITS, _attn_split_combine_kernel, auto_splits


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
    B, Hq, Lq, D, Hkv, Lk, Dv = qkv_dims(q, k, v)
    if split_kv is not None and int(split_kv) < 1:
        raise ValueError(f"llmaccel::attention: split_kv must be >= 1, got {split_kv}")

    device = q.device
    # Stored as [B, Lq, Hq, Dv] (llmaccel.ops.attention.out_empty: the heads merge back into the hidden dim
    # as a view); the kernels write through out's strides.
    out = torch.empty_strided((B, Hq, Lq, Dv), (Lq * Hq * Dv, Dv, Hq * Dv, 1),
                              dtype=torch.float32 if host_rounds(q.dtype) else q.dtype, device=device)
    lse = torch.empty((B, Hq, Lq), dtype=torch.float32, device=device)
    if B * Hq * Lq == 0:
        return out.to(q.dtype), lse
    check_gqa(Hq, Hkv)
    if Lk == 0:  # nothing to attend: every row is fully masked
        out.zero_()
        lse.fill_(float("-inf"))
        return out.to(q.dtype), lse

    scale, mask_kind, mask_arg, m_strides, scale_in_exp, score_scale, exp_scale, causal_off = launch_params(
        q, mask, scale, is_causal, causal_bottom_right, B, Hq, Lq, Lk, D)
    if split_kv is not None:
        n_splits = min(int(split_kv), MAX_SPLITS)
    else:
        n_splits = auto_splits(B * Hq, Lq, Lk, device)
    BLOCK_D = max(16, triton.next_power_of_2(D))
    BLOCK_DV = max(16, triton.next_power_of_2(Dv))
    consts = dict(
        MASK_KIND=mask_kind, SCALE_IN_EXP=scale_in_exp, IS_CAUSAL=bool(is_causal),
        SPLIT=n_splits > 1, DOT_FP32=dot_fp32(q.dtype), BLOCK_D=BLOCK_D, BLOCK_DV=BLOCK_DV, **_fwd.INTERPRET_META,
    )
    tune = (triton.next_power_of_2(Lq), triton.next_power_of_2(Lk))

    for b0, b1 in batch_chunks(B, Hq):
        qc, kc, vc, oc, lc = q[b0:b1], k[b0:b1], v[b0:b1], out[b0:b1], lse[b0:b1]
        # A mask with a batch stride is 4-D with size B in dim 0; otherwise it is batch-broadcast.
        mc = mask_arg if m_strides[0] == 0 else mask_arg[b0:b1]
        args = (
            Hq, Hq // Hkv, Lq, Lk, D, Dv,
            *qc.stride(), *kc.stride(), *vc.stride(), *m_strides, *oc.stride(),
            score_scale, exp_scale, causal_off, n_splits, *tune,
        )
        bh = (b1 - b0) * Hq

        def launch():
            if n_splits == 1:
                def grid(META):
                    return (triton.cdiv(Lq, META["BLOCK_M"]), bh, 1)

                _fwd.fwd_kernel[grid](qc, kc, vc, mc, oc, lc, lc, lc, lc, *args, **consts)
                return
            acc_ws = torch.empty((n_splits, bh, Lq, Dv), dtype=torch.float32, device=device)
            m_ws = torch.empty((n_splits, bh, Lq), dtype=torch.float32, device=device)
            l_ws = torch.empty((n_splits, bh, Lq), dtype=torch.float32, device=device)

            def grid(META):
                return (triton.cdiv(Lq, META["BLOCK_M"]), bh, n_splits)

            _fwd.split_kernel[grid](qc, kc, vc, mc, oc, lc, acc_ws, m_ws, l_ws, *args, **consts)
            block_s = triton.next_power_of_2(n_splits)
            _attn_split_combine_kernel[(bh * Lq,)](
                acc_ws, m_ws, l_ws, oc, lc,
                Hq, Lq, Dv, bh, n_splits, exp_scale, *oc.stride(),
                BLOCK_S=block_s, BLOCK_DV=BLOCK_DV, num_warps=4 if block_s * BLOCK_DV <= 4096 else 8,
            )

        on_device(device, launch)
    return out.to(q.dtype), lse
