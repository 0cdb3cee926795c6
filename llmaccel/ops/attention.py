"""``llmaccel.attention``: fused scaled-dot-product attention (SDPA semantics, [B, H, L, D] layout).

Shapes::

    query : [B, Hq,  Lq, D ]   fp32 / fp16 / bf16 (key and value: the same dtype), any strides
    key   : [B, Hkv, Lk, D ]
    value : [B, Hkv, Lk, Dv]
    out   : [B, Hq,  Lq, Dv]   query's dtype
    lse   : [B, Hq,  Lq]       fp32

Math (the documented truth; :func:`attention_reference` computes it, in fp32)::

    g(h)    = h // (Hq // Hkv)                        # GQA: query head h reads kv head g(h)
    s[i, j] = scale * q[h, i] . k[g(h), j]  (+ attn_mask[i, j] when the mask is float)
    allowed(i, j) = attn_mask[i, j]                   (bool mask: True = attend)
                    and j <= i                        (is_causal, top-left aligned like SDPA)
                    and j <= i + (Lk - Lq)            (is_causal and causal_bottom_right: KV-cache decoding)
    lse[i]  = log(sum over allowed j of exp(s[i, j]))           (natural log; -inf when no j is allowed)
    p[i, j] = exp(s[i, j] - lse[i])  for allowed j, else 0
    out[i]  = sum_j dropout(p)[i, j] * v[g(h), j]                (0 for a fully masked row, never NaN)

``scale`` defaults to ``1 / sqrt(D)``.  The mask (bool, or any float dtype:
added to the scores) broadcasts to ``[B, Hq, Lq, Lk]`` like SDPA's (a 2-D
``[Lq, Lk]`` mask is fine); a float row that is -inf everywhere is a fully
masked row.  ``is_causal`` together with ``attn_mask`` raises, as in SDPA.
GQA (``Hq != Hkv``) needs ``enable_gqa=True`` and ``Hq % Hkv == 0``; K/V are
never repeated in memory.

Dropout (``dropout_p > 0``) follows SDPA: it is applied on every call with
``dropout_p > 0`` (pass 0 in eval), keeping each probability with chance
``1 - dropout_p`` and scaling kept ones by ``1 / (1 - dropout_p)``; lse is
that of the probabilities before dropout.  The keep mask comes from a seed
drawn from torch's default CPU generator, so results are random and
reproducible under ``torch.manual_seed``; backward regenerates the same mask
from that seed.  Only the ``torch`` backend implements dropout.

Backward (from the saved q, k, v, mask, out and lse).  On CPU tensors with
``dropout_p == 0`` and no float mask (whose gradient it does not produce), when
llmaccel._C is built and the requested backend is ``auto`` or ``cpp``, the
fused C++ backward runs (csrc/attention_bwd_driver.h, FlashAttention-2 style:
delta = rowsum(dO * O) - dlse, one pass over kv blocks for dK/dV and one over
query blocks for dQ; fp16/bf16 cast to fp32 and back).  On CUDA tensors with
backend ``auto`` or ``triton`` (or CPU tensors under TRITON_INTERPRET=1 with
backend ``triton``), ``dropout_p == 0`` and no float mask, the fused Triton
backward runs (kernels/attention.py ``attention_bwd``, the same two passes, in
the inputs' dtype with fp32 accumulation).  Everything else runs plain PyTorch, chunked over queries so memory stays O(L)::

    P  = exp(S - lse)  (recomputed per chunk of queries, renormalized to row sums of 1), Pd = dropout(P)
    dV = Pd^T dO                        dP = dropout(dO V^T)
    dS = P * (dP - rowsum(P * dP) + dlse)   dmask = dS (float masks, summed over broadcast dims)
    dQ = dS K * scale                   dK = dS^T Q * scale     (dK, dV summed over each GQA group)

Backends: ``cpp`` (csrc/attention*.cpp; fp32 core, fp16/bf16 cast in and
out), ``triton`` (kernels/attention.py), ``torch`` (the reference).  Neither
kernel implements dropout yet, so ``dropout_p > 0`` runs on ``torch``.
``llmaccel.backends.explain("attention", q, k, v, attn_mask, dropout_p,
is_causal, scale, enable_gqa, causal_bottom_right)`` says which one runs.
"""

from __future__ import annotations

import importlib
import math
import threading
from typing import Optional

import torch
from torch import Tensor

from .. import backends
from .._ext import ext
from ._checks import check_same_device, check_tensor, fail
from .quantize import FLOAT_DTYPES

OP = "attention"

# Queries processed per step by the reference forward and by the backward:
# the largest temporary is [B, Hq, chunk, Lk] fp32, never [.., Lq, Lk].
# chunk = QUERY_CHUNK rows, fewer for long keys so that one temporary stays
# within CHUNK_BYTES (a handful are alive at once: at L = 16384, one head,
# the forward's peak extra memory is ~40 MB instead of ~150 MB).
QUERY_CHUNK = 256
CHUNK_BYTES = 4 << 20


def default_chunk(B: int, Hq: int, Lk: int) -> int:
    """Query rows per step for [B, Hq, ., Lk]: QUERY_CHUNK, or fewer (>= 16) to keep CHUNK_BYTES per temporary."""
    rows = CHUNK_BYTES // max(4 * B * Hq * max(Lk, 1), 1)
    return int(max(min(16, QUERY_CHUNK), min(QUERY_CHUNK, rows)))


# --------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------

def _validate(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, causal_bottom_right) -> None:
    for name, t in (("query", query), ("key", key), ("value", value)):
        check_tensor(OP, name, t)
        if t.dim() != 4:
            fail(OP, f"{name} must be 4-D [B, H, L, D], got {t.dim()}-D with shape {tuple(t.shape)}")
        if t.dtype not in FLOAT_DTYPES:
            fail(OP, f"{name} must be float32, float16 or bfloat16, got {t.dtype}", TypeError)
    if key.dtype != query.dtype or value.dtype != query.dtype:
        fail(OP, f"query, key and value must have one dtype; got {query.dtype}, {key.dtype}, {value.dtype}",
             TypeError)
    if attn_mask is not None:
        check_tensor(OP, "attn_mask", attn_mask)
        check_same_device(OP, query=query, key=key, value=value, attn_mask=attn_mask)
    else:
        check_same_device(OP, query=query, key=key, value=value)
    B, Hq, Lq, D = query.shape
    Bk, Hkv, Lk, Dk = key.shape
    if Dk != D:
        fail(OP, f"query and key must have the same head dim: query is {list(query.shape)}, key is {list(key.shape)}")
    if Bk != B:
        fail(OP, f"query and key must have the same batch size: query is {list(query.shape)}, "
                 f"key is {list(key.shape)}")
    if tuple(value.shape[:3]) != (Bk, Hkv, Lk):
        fail(OP, f"key and value must agree in [B, Hkv, Lk]: key is {list(key.shape)}, value is {list(value.shape)}")
    if Hq != Hkv:
        if not enable_gqa:
            fail(OP, f"query has {Hq} heads and key/value have {Hkv}: pass enable_gqa=True for grouped-query "
                     f"attention (like scaled_dot_product_attention)")
        if Hkv == 0 or Hq % Hkv != 0:
            fail(OP, f"enable_gqa=True needs the query heads ({Hq}) to be a multiple of the key/value heads ({Hkv})")
    if attn_mask is not None:
        if attn_mask.dtype != torch.bool and not attn_mask.is_floating_point():
            fail(OP, f"attn_mask must be bool (True = attend) or a float tensor (added to the scores), "
                     f"got {attn_mask.dtype}", TypeError)
        target = (B, Hq, Lq, Lk)
        ok = attn_mask.dim() <= 4
        if ok:
            try:
                ok = tuple(torch.broadcast_shapes(tuple(attn_mask.shape), target)) == target
            except RuntimeError:
                ok = False
        if not ok:
            fail(OP, f"attn_mask of shape {tuple(attn_mask.shape)} does not broadcast to [B, Hq, Lq, Lk] = "
                     f"{list(target)}")
        if is_causal:
            fail(OP, "is_causal=True and attn_mask cannot be combined (as in scaled_dot_product_attention); "
                     "fold the causal mask into attn_mask instead")
    if not isinstance(dropout_p, (int, float)) or isinstance(dropout_p, bool) or not 0.0 <= dropout_p < 1.0:
        fail(OP, f"dropout_p must be a float in [0, 1), got {dropout_p!r}")
    if causal_bottom_right and not is_causal:
        fail(OP, "causal_bottom_right=True only changes the causal mask's alignment; it needs is_causal=True")
    if scale is not None and (not isinstance(scale, (int, float)) or isinstance(scale, bool)):
        fail(OP, f"scale must be a float or None, got {scale!r}", TypeError)


def _resolve_scale(scale: Optional[float], D: int) -> float:
    if scale is not None:
        return float(scale)
    return 1.0 / math.sqrt(D) if D > 0 else 1.0


def _mask4(attn_mask: Optional[Tensor]) -> Optional[Tensor]:
    """The mask as a 4-D view (leading size-1 dims added; no copy)."""
    if attn_mask is None:
        return None
    m = attn_mask
    while m.dim() < 4:
        m = m.unsqueeze(0)
    return m


# --------------------------------------------------------------------------
# reference (chunked over queries: O(L) memory)
# --------------------------------------------------------------------------

# The dropout seed (and chunk size) of the last forward on this thread, handed
# from the forward to setup_context (which runs right after it, on the same
# thread, in eager autograd).
_tls = threading.local()


def _draw_seed() -> int:
    return int(torch.randint(0, 2**62, (1,), dtype=torch.int64).item())


class _Chunks:
    """Per-chunk pieces shared by the reference forward and the backward."""

    def __init__(self, q, k, v, attn_mask, is_causal, scale, causal_bottom_right):
        self.B, self.Hq, self.Lq, self.D = q.shape
        self.Hkv, self.Lk, self.Dv = k.shape[1], k.shape[2], v.shape[3]
        self.G = self.Hq // self.Hkv if self.Hkv else 1
        self.q = q
        # fp32, batch dims collapsible (one O(L) copy at most): every matmul below is a plain bmm over
        # [B * Hkv] with no per-chunk copy, and K/V are never repeated over the group.
        self.kf = k.to(torch.float32).contiguous()
        self.vf = v.to(torch.float32).contiguous()
        self.m4 = _mask4(attn_mask)
        self.is_causal = is_causal
        self.offset = self.Lk - self.Lq if causal_bottom_right else 0
        self.scale = _resolve_scale(scale, self.D)

    def rows5(self, t: Tensor, s: int, e: int) -> Tensor:
        """t[:, :, s:e] of a [B, Hq, L, X] tensor as fp32 [B, Hkv, G * rows, X] (query heads of a group stacked)."""
        c = t[:, :, s:e].to(torch.float32)
        return c.reshape(self.B, self.Hkv, self.G * (e - s), c.shape[-1])

    def scores(self, s: int, e: int) -> Tensor:
        """Masked fp32 scores of queries [s, e): [B, Hkv, G, rows, Lk] (-inf where not allowed)."""
        r = e - s
        qc = self.rows5(self.q, s, e)
        sc = torch.matmul(qc, self.kf.transpose(-1, -2)).mul_(self.scale)
        s5 = sc.view(self.B, self.Hkv, self.G, r, self.Lk)
        m = self.m4
        if m is not None:
            mc = m if m.shape[2] == 1 else m[:, :, s:e]
            m5 = mc.unflatten(1, (self.Hkv, self.G)) if mc.shape[1] != 1 else mc.unsqueeze(1)
            if m.dtype == torch.bool:
                s5.masked_fill_(~m5, float("-inf"))
            else:
                s5.add_(m5)
        if self.is_causal:
            i = torch.arange(s, e, device=sc.device).unsqueeze(1)
            j = torch.arange(self.Lk, device=sc.device).unsqueeze(0)
            s5.masked_fill_(j > i + self.offset, float("-inf"))
        return s5

    def keep(self, gen: torch.Generator, s: int, e: int, dropout_p: float) -> Tensor:
        """Dropout keep mask of queries [s, e), [B, Hkv, G, rows, Lk] bool; drawn in chunk order from ``gen``."""
        shape = (self.B, self.Hkv, self.G, e - s, self.Lk)
        return torch.rand(shape, generator=gen, device=self.q.device) >= dropout_p


def _generator(seed: int, device: torch.device) -> torch.Generator:
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen


def attention_reference(query: Tensor, key: Tensor, value: Tensor, attn_mask: Optional[Tensor] = None,
                        dropout_p: float = 0.0, is_causal: bool = False, scale: Optional[float] = None,
                        enable_gqa: bool = False, causal_bottom_right: bool = False, *,
                        dropout_seed: Optional[int] = None, chunk: Optional[int] = None) -> tuple[Tensor, Tensor]:
    """Plain-PyTorch attention (module docstring): ``(out, lse)``, fp32 math, any device.

    Queries are processed ``chunk`` (default :func:`default_chunk`) rows at a
    time, so no ``Lq x Lk`` matrix is ever allocated; GQA stacks the query
    heads of a group against their one K/V head (no repeat).  With
    ``dropout_p > 0`` the keep mask is drawn from ``dropout_seed`` (default: a
    seed drawn from torch's default generator, so the result is random).
    """
    _validate(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, causal_bottom_right)
    chunk = chunk or default_chunk(query.shape[0], query.shape[1], key.shape[2])
    c = _Chunks(query, key, value, attn_mask, is_causal, scale, causal_bottom_right)
    B, Hq, Lq, Hkv, G, Dv = c.B, c.Hq, c.Lq, c.Hkv, c.G, c.Dv
    out = torch.empty((B, Hq, Lq, Dv), dtype=torch.float32, device=query.device)
    lse = torch.empty((B, Hq, Lq), dtype=torch.float32, device=query.device)
    gen = None
    if dropout_p > 0:
        if dropout_seed is None:
            dropout_seed = _draw_seed()
        gen = _generator(dropout_seed, query.device)
    out5 = out.view(B, Hkv, G, Lq, Dv)
    lse5 = lse.view(B, Hkv, G, Lq)
    for s in range(0, Lq, chunk):
        e = min(s + chunk, Lq)
        s5 = c.scores(s, e)
        m = s5.amax(-1, keepdim=True) if c.Lk else s5.new_full((*s5.shape[:-1], 1), float("-inf"))
        m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))  # fully masked rows: exp(-inf - 0) = 0
        p = torch.exp(s5.sub_(m))
        den = p.sum(-1, keepdim=True)
        lse5[:, :, :, s:e] = (torch.log(den) + m).squeeze(-1)        # log(0) = -inf for fully masked rows
        p.div_(torch.where(den > 0, den, torch.ones_like(den)))
        if gen is not None:
            p.mul_(c.keep(gen, s, e, dropout_p)).mul_(1.0 / (1.0 - dropout_p))
        o = torch.matmul(p.view(B, Hkv, G * (e - s), c.Lk), c.vf)
        out5[:, :, :, s:e] = o.view(B, Hkv, G, e - s, Dv)
    _tls.dropout = (dropout_seed, chunk) if dropout_p > 0 else None
    return out.to(query.dtype), lse


def _attention_backward(q, k, v, attn_mask, out, lse, grad_out, grad_lse, dropout_p, is_causal, scale,
                        causal_bottom_right, dropout_seed, chunk, need_mask_grad):
    """(dq, dk, dv, dmask) from the saved forward (module docstring), chunked over queries."""
    c = _Chunks(q, k, v, attn_mask, is_causal, scale, causal_bottom_right)
    B, Hq, Lq, Hkv, G, Lk, D, Dv = c.B, c.Hq, c.Lq, c.Hkv, c.G, c.Lk, c.D, c.Dv
    dq = torch.empty((B, Hq, Lq, D), dtype=torch.float32, device=q.device)
    dk = torch.zeros((B, Hkv, Lk, D), dtype=torch.float32, device=q.device)
    dv = torch.zeros((B, Hkv, Lk, Dv), dtype=torch.float32, device=q.device)
    dq5 = dq.view(B, Hkv, G, Lq, D)
    dmask = None
    if need_mask_grad:
        dmask = torch.zeros(c.m4.shape, dtype=torch.float32, device=q.device)
    gen = _generator(dropout_seed, q.device) if dropout_p > 0 else None
    lse_safe = torch.where(lse == float("-inf"), torch.full_like(lse, float("inf")), lse)  # P = 0 on masked rows
    for s in range(0, Lq, chunk):
        e = min(s + chunk, Lq)
        r = e - s
        s5 = c.scores(s, e)
        p = torch.exp(s5.sub_(lse_safe[:, :, s:e].reshape(B, Hkv, G, r, 1))).view(B, Hkv, G * r, Lk)
        # Row sums are 1 up to rounding; renormalizing absorbs the difference between the scores the kernel
        # rounded in the forward and these recomputed ones (which would otherwise leave dS = P (dP - rowsum(P dP))
        # off by ~1e-6 * |dP| even where the exact dS is 0, e.g. rows with a single live key).
        den = p.sum(-1, keepdim=True)
        p.div_(torch.where(den > 0, den, torch.ones_like(den)))
        do = c.rows5(grad_out, s, e)
        dp = torch.matmul(do, c.vf.transpose(-1, -2))
        if gen is not None:
            keep = c.keep(gen, s, e, dropout_p).view(B, Hkv, G * r, Lk) * (1.0 / (1.0 - dropout_p))
            dv += torch.matmul((p * keep).transpose(-1, -2), do)
            dp.mul_(keep)
        else:
            dv += torch.matmul(p.transpose(-1, -2), do)
        # rowsum(P * dP) equals rowsum(dO * O) in exact arithmetic; from the fp32 P it is free of the output's
        # rounding (fp16/bf16 out) and exactly cancels where a row has one live key.
        delta = (p * dp).sum(-1, keepdim=True)
        if grad_lse is not None:                                        # d lse_i / d s_ij = P_ij
            delta = delta - grad_lse[:, :, s:e].to(torch.float32).reshape(B, Hkv, G * r, 1)
        ds = p.mul_(dp.sub_(delta))                                     # in place: p is not needed any more
        qc = c.rows5(q, s, e)
        dq5[:, :, :, s:e] = torch.matmul(ds, c.kf).mul_(c.scale).view(B, Hkv, G, r, D)
        dk += torch.matmul(ds.transpose(-1, -2), qc).mul_(c.scale)
        if dmask is not None:
            g4 = ds.view(B, Hq, r, Lk)
            mb, mh, mq, mk = dmask.shape
            dims = [d for d, (n, full) in enumerate(zip((mb, mh, mq, mk), (B, Hq, r, Lk))) if n == 1 and full != 1]
            if dims:
                g4 = g4.sum(dims, keepdim=True)
            if mq == 1:
                dmask += g4
            else:
                dmask[:, :, s:e] += g4
    return dq, dk, dv, dmask


# --------------------------------------------------------------------------
# backends
# --------------------------------------------------------------------------

_dispatch = backends.dispatcher(OP, device_of=lambda query, *rest: query.device)


def register_backend(backend: str, check=None):
    """Kernels in other files attach themselves here."""
    return _dispatch.register(backend, check)


@_dispatch.register("torch")
def _attention_torch(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, causal_bottom_right):
    return attention_reference(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa,
                               causal_bottom_right)


def _degenerate(query, key, value):
    """(out, lse) when there is nothing to compute (no queries, or no keys: every row fully masked), else None."""
    B, Hq, Lq, _ = query.shape
    Dv, Lk = value.shape[3], key.shape[2]
    if B * Hq * Lq == 0 or Lk == 0:
        out = torch.zeros((B, Hq, Lq, Dv), dtype=query.dtype, device=query.device)
        lse = torch.full((B, Hq, Lq), float("-inf"), dtype=torch.float32, device=query.device)
        return out, lse
    return None


def _no_dropout_check(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, causal_bottom_right):
    """Op-level limit shared by both kernels (availability of the backend itself is the dispatcher's check)."""
    if dropout_p > 0:
        return "the fused attention kernels do not implement dropout yet (dropout_p > 0 runs on torch)"
    return None


@register_backend("cpp", check=_no_dropout_check)
def _attention_cpp(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, causal_bottom_right):
    """csrc/attention*.cpp: fp32 core; fp16/bf16 are widened first and the output rounded back."""
    done = _degenerate(query, key, value)
    if done is not None:
        return done
    B, Hq, Lq, D = query.shape
    Hkv, Lk, Dv = key.shape[1], key.shape[2], value.shape[3]
    q, k, v = (t.to(torch.float32) for t in (query, key, value))  # no copy for fp32; strides passed through
    mask_kind, mptr, ms = 0, 0, (0, 0, 0, 0)
    m = None
    if attn_mask is not None:
        m = attn_mask if attn_mask.dtype in (torch.bool, torch.float32) else attn_mask.to(torch.float32)
        m = m.expand(B, Hq, Lq, Lk)  # stride 0 on broadcast dims: no copy
        if m.dtype == torch.bool:
            m = m.view(torch.uint8)
            mask_kind = 1
        else:
            mask_kind = 2
        mptr, ms = m.data_ptr(), m.stride()
    out = torch.empty((B, Hq, Lq, Dv), dtype=torch.float32, device=query.device)
    lse = torch.empty((B, Hq, Lq), dtype=torch.float32, device=query.device)
    ext().attention_fwd(
        B, Hq, Hkv, Lq, Lk, D, Dv,
        q.data_ptr(), *q.stride(),
        k.data_ptr(), *k.stride(),
        v.data_ptr(), *v.stride(),
        mptr, mask_kind, *ms,
        bool(is_causal), bool(causal_bottom_right), _resolve_scale(scale, D),
        out.data_ptr(), *out.stride(),
        lse.data_ptr(),
        torch.get_num_threads())
    return out.to(query.dtype), lse


def _triton_module():
    return importlib.import_module("llmaccel.kernels.attention")


@register_backend("triton", check=_no_dropout_check)
def _attention_triton(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, causal_bottom_right):
    """kernels/attention.py: FlashAttention-style Triton forward (mask passed 4-D, stride 0 on broadcast dims)."""
    done = _degenerate(query, key, value)
    if done is not None:
        return done
    B, Hq, Lq, D = query.shape
    m = attn_mask.expand(B, Hq, Lq, key.shape[2]) if attn_mask is not None else None
    return _triton_module().attention_fwd(query, key, value, m, bool(is_causal), bool(causal_bottom_right),
                                          _resolve_scale(scale, D))


# --------------------------------------------------------------------------
# the op
# --------------------------------------------------------------------------

def _attention_body(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, causal_bottom_right):
    """The op's body: validation, then the backend the dispatcher picks."""
    _validate(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, causal_bottom_right)
    _tls.dropout = None
    out, lse = _dispatch(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, causal_bottom_right)
    # Fresh, contiguous outputs whatever the backend returned (the fake promises exactly this).
    return out.contiguous(), lse.contiguous()


@torch.library.custom_op("llmaccel::attention", mutates_args=())
def _attention_op(query: Tensor, key: Tensor, value: Tensor, attn_mask: Optional[Tensor], dropout_p: float,
                  is_causal: bool, scale: Optional[float], enable_gqa: bool,
                  causal_bottom_right: bool) -> tuple[Tensor, Tensor]:
    return _attention_body(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, causal_bottom_right)


@_attention_op.register_fake
def _attention_fake(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, causal_bottom_right):
    _validate(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, causal_bottom_right)
    _tls.dropout = None  # no seed from a traced call: a stale one must not reach setup_context
    B, Hq, Lq, _ = query.shape
    out = query.new_empty((B, Hq, Lq, value.shape[3]))
    lse = query.new_empty((B, Hq, Lq), dtype=torch.float32)
    return out, lse


def _setup_context(ctx, inputs, output):
    query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, causal_bottom_right = inputs
    out, lse = output
    ctx.save_for_backward(query, key, value, attn_mask, out, lse)
    ctx.args = (dropout_p, is_causal, scale, causal_bottom_right)
    ctx.dropout = getattr(_tls, "dropout", None) if dropout_p > 0 else None
    _tls.dropout = None
    ctx.mask_is_float = attn_mask is not None and attn_mask.is_floating_point()


def _use_cpp_backward(query, attn_mask, dropout_p) -> bool:
    """The fused C++ backward runs for CPU tensors without dropout and without a float mask (whose gradient it
    does not produce), when llmaccel._C is built and the requested backend is "auto" or "cpp"."""
    if query.device.type != "cpu" or dropout_p > 0:
        return False
    if attn_mask is not None and attn_mask.dtype != torch.bool:
        return False
    if backends.current() not in ("auto", "cpp"):
        return False
    return backends.cpp_device_problem(query.device) is None  # the extension is built


@torch.library.custom_op("llmaccel::attention_backward_cpp", mutates_args=())
def _attention_backward_cpp(q: Tensor, k: Tensor, v: Tensor, attn_mask: Optional[Tensor], out: Tensor, lse: Tensor,
                            grad_out: Tensor, grad_lse: Optional[Tensor], is_causal: bool, scale: Optional[float],
                            causal_bottom_right: bool) -> tuple[Tensor, Tensor, Tensor]:
    """(dq, dk, dv) fp32 from csrc/attention*.cpp's fused backward (an opaque op, so it traces under compile)."""
    B, Hq, Lq, D = q.shape
    Hkv, Lk, Dv = k.shape[1], k.shape[2], v.shape[3]
    qf, kf, vf, of, gf = (t.to(torch.float32) for t in (q, k, v, out, grad_out))  # no copy for fp32
    lsef = lse.to(torch.float32).contiguous()
    dl = grad_lse.to(torch.float32).contiguous() if grad_lse is not None else None
    mask_kind, mptr, ms = 0, 0, (0, 0, 0, 0)
    m = None
    if attn_mask is not None:
        m = _mask4(attn_mask).expand(B, Hq, Lq, Lk).view(torch.uint8)  # bool; stride 0 on broadcast dims
        mask_kind, mptr, ms = 1, m.data_ptr(), m.stride()
    dq = torch.empty((B, Hq, Lq, D), dtype=torch.float32, device=q.device)
    dk = torch.empty((B, Hkv, Lk, D), dtype=torch.float32, device=q.device)
    dv = torch.empty((B, Hkv, Lk, Dv), dtype=torch.float32, device=q.device)
    ext().attention_bwd(
        B, Hq, Hkv, Lq, Lk, D, Dv,
        qf.data_ptr(), *qf.stride(),
        kf.data_ptr(), *kf.stride(),
        vf.data_ptr(), *vf.stride(),
        mptr, mask_kind, *ms,
        bool(is_causal), bool(causal_bottom_right), _resolve_scale(scale, D),
        of.data_ptr(), *of.stride(),
        lsef.data_ptr(),
        gf.data_ptr(), *gf.stride(),
        dl.data_ptr() if dl is not None else 0,
        dq.data_ptr(), *dq.stride(),
        dk.data_ptr(), *dk.stride(),
        dv.data_ptr(), *dv.stride(),
        torch.get_num_threads())
    return dq, dk, dv


@_attention_backward_cpp.register_fake
def _attention_backward_cpp_fake(q, k, v, attn_mask, out, lse, grad_out, grad_lse, is_causal, scale,
                                 causal_bottom_right):
    B, Hq, Lq, D = q.shape
    Hkv, Lk, Dv = k.shape[1], k.shape[2], v.shape[3]
    return (q.new_empty((B, Hq, Lq, D), dtype=torch.float32), q.new_empty((B, Hkv, Lk, D), dtype=torch.float32),
            q.new_empty((B, Hkv, Lk, Dv), dtype=torch.float32))


def _use_triton_backward(query, attn_mask, dropout_p) -> bool:
    """The fused Triton backward (kernels/attention.py ``attention_bwd``) runs when the requested backend is
    "triton" (or "auto" on CUDA), the tensors are CUDA (or CPU under TRITON_INTERPRET=1), there is no dropout
    and the mask is None or bool (a float mask needs its gradient: plain PyTorch)."""
    if dropout_p > 0 or (attn_mask is not None and attn_mask.dtype != torch.bool):
        return False
    backend = backends.current()
    if query.device.type == "cuda":
        if backend not in ("auto", "triton"):
            return False
    elif query.device.type == "cpu":
        if backend != "triton" or not backends.TRITON_INTERPRET:
            return False
    else:
        return False
    return backends.triton_device_problem(query.device) is None  # Triton importable


@torch.library.custom_op("llmaccel::attention_backward_triton", mutates_args=())
def _attention_backward_triton(q: Tensor, k: Tensor, v: Tensor, attn_mask: Optional[Tensor], out: Tensor,
                               lse: Tensor, grad_out: Tensor, grad_lse: Optional[Tensor], is_causal: bool,
                               scale: Optional[float], causal_bottom_right: bool) -> tuple[Tensor, Tensor, Tensor]:
    """(dq, dk, dv) in the inputs' dtype from kernels/attention.py's fused backward (an opaque op for compile)."""
    B, Hq, Lq, D = q.shape
    m = _mask4(attn_mask).expand(B, Hq, Lq, k.shape[2]) if attn_mask is not None else None
    dq, dk, dv = _triton_module().attention_bwd(q, k, v, m, bool(is_causal), bool(causal_bottom_right),
                                                _resolve_scale(scale, D), out, lse, grad_out.to(out.dtype),
                                                grad_lse)
    return dq.contiguous(), dk.contiguous(), dv.contiguous()


@_attention_backward_triton.register_fake
def _attention_backward_triton_fake(q, k, v, attn_mask, out, lse, grad_out, grad_lse, is_causal, scale,
                                    causal_bottom_right):
    B, Hq, Lq, D = q.shape
    Hkv, Lk, Dv = k.shape[1], k.shape[2], v.shape[3]
    return (q.new_empty((B, Hq, Lq, D)), q.new_empty((B, Hkv, Lk, D)), q.new_empty((B, Hkv, Lk, Dv)))


def _backward(ctx, grad_out, grad_lse):
    query, key, value, attn_mask, out, lse = ctx.saved_tensors
    dropout_p, is_causal, scale, causal_bottom_right = ctx.args
    seed, chunk = None, default_chunk(query.shape[0], query.shape[1], key.shape[2])
    if dropout_p > 0:
        if ctx.dropout is None:
            raise NotImplementedError("llmaccel.attention: backward with dropout_p > 0 needs the dropout seed of an "
                                      "eager forward (not available under torch.compile or from a kernel "
                                      "without dropout)")
        seed, chunk = ctx.dropout
    need_mask_grad = ctx.mask_is_float and ctx.needs_input_grad[3]
    if grad_out is None:
        grad_out = torch.zeros_like(out)
    if _use_triton_backward(query, attn_mask, dropout_p):
        dq, dk, dv = _attention_backward_triton(query, key, value, attn_mask, out, lse, grad_out, grad_lse,
                                                is_causal, scale, causal_bottom_right)
        dmask = None
    elif _use_cpp_backward(query, attn_mask, dropout_p):
        dq, dk, dv = _attention_backward_cpp(query, key, value, attn_mask, out, lse, grad_out, grad_lse, is_causal,
                                             scale, causal_bottom_right)
        dmask = None
    else:
        dq, dk, dv, dmask = _attention_backward(query, key, value, attn_mask, out, lse, grad_out, grad_lse, dropout_p,
                                                is_causal, scale, causal_bottom_right, seed, chunk, need_mask_grad)
    if dmask is not None:
        dmask = dmask.reshape(attn_mask.shape).to(attn_mask.dtype)
    return (dq.to(query.dtype), dk.to(key.dtype), dv.to(value.dtype), dmask, None, None, None, None, None)


_attention_op.register_autograd(_backward, setup_context=_setup_context)


def attention(query: Tensor, key: Tensor, value: Tensor, attn_mask: Optional[Tensor] = None, dropout_p: float = 0.0,
              is_causal: bool = False, scale: Optional[float] = None, enable_gqa: bool = False, *,
              causal_bottom_right: bool = False, return_lse: bool = False):
    """Scaled-dot-product attention with ``F.scaled_dot_product_attention``'s arguments and semantics.

    ``query`` [B, Hq, Lq, D], ``key`` [B, Hkv, Lk, D], ``value`` [B, Hkv, Lk, Dv] -> ``out`` [B, Hq, Lq, Dv];
    with ``return_lse=True`` also ``lse`` (fp32 [B, Hq, Lq], natural-log log-sum-exp of the scores; -inf for
    fully masked rows).  ``causal_bottom_right=True`` aligns the causal mask to the end of the keys (query i
    sees keys j <= i + Lk - Lq: KV-cache decoding).  Runs ``torch.ops.llmaccel.attention`` (so it traces
    under ``torch.compile``); the backend follows :mod:`llmaccel.backends`; the module docstring has the math.
    """
    # Tensors are validated in the op's body; bad scalars are caught here, before the schema would.
    if not isinstance(dropout_p, (int, float)) or isinstance(dropout_p, bool):
        fail(OP, f"dropout_p must be a float in [0, 1), got {dropout_p!r}", TypeError)
    if scale is not None and (not isinstance(scale, (int, float)) or isinstance(scale, bool)):
        fail(OP, f"scale must be a float or None, got {scale!r}", TypeError)
    out, lse = backends.call_op(torch.ops.llmaccel.attention, _attention_body, query, key, value, attn_mask,
                                float(dropout_p), bool(is_causal), None if scale is None else float(scale),
                                bool(enable_gqa), bool(causal_bottom_right))
    return (out, lse) if return_lse else out


_dispatch.set_public(attention, validate=_validate)  # the arguments backends.explain accepts
