"""Plain-PyTorch attention forward and backward, chunked over queries (fp32 math, O(L) memory).

The documented truth the kernels are tested against; the formulas are in :mod:`llmaccel.ops.attention`.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .attention_args import mask4, resolve_scale, validate
from .causal import causal_allowed

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


def draw_seed() -> int:
    """A dropout seed from torch's default CPU generator (so ``torch.manual_seed`` reproduces a call)."""
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
        self.m4 = mask4(attn_mask)
        self.is_causal = is_causal
        self.offset = self.Lk - self.Lq if causal_bottom_right else 0
        self.scale = resolve_scale(scale, self.D)

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
            s5.masked_fill_(~causal_allowed(s, e, self.Lk, self.offset, device=sc.device), float("-inf"))
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
    validate(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, causal_bottom_right)
    return reference_forward(query, key, value, attn_mask, dropout_p, is_causal, scale, causal_bottom_right,
                             dropout_seed, chunk)


def reference_forward(query, key, value, attn_mask, dropout_p, is_causal, scale, causal_bottom_right, dropout_seed,
                      chunk=None) -> tuple[Tensor, Tensor]:
    """:func:`attention_reference` on arguments already validated (the op's torch backend)."""
    chunk = chunk or default_chunk(query.shape[0], query.shape[1], key.shape[2])
    c = _Chunks(query, key, value, attn_mask, is_causal, scale, causal_bottom_right)
    B, Hq, Lq, Hkv, G, Dv = c.B, c.Hq, c.Lq, c.Hkv, c.G, c.Dv
    out = torch.empty((B, Hq, Lq, Dv), dtype=torch.float32, device=query.device)
    lse = torch.empty((B, Hq, Lq), dtype=torch.float32, device=query.device)
    gen = None
    if dropout_p > 0:
        if dropout_seed is None:
            dropout_seed = draw_seed()
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
    return out.to(query.dtype), lse


def reference_backward(q, k, v, attn_mask, out, lse, grad_out, grad_lse, dropout_p, is_causal, scale,
                       causal_bottom_right, dropout_seed, chunk, need_mask_grad):
    """(dq, dk, dv fp32, dmask fp32 of the mask's 4-D shape or None) from the saved forward, chunked over queries
    (the backward formulas in :mod:`llmaccel.ops.attention`); the dropout keep mask is redrawn from
    ``dropout_seed`` in the forward's chunk order, so ``chunk`` must be the forward's."""
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
