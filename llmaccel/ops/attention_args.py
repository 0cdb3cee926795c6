"""Argument checks of ``llmaccel.attention`` (and its reference and backward): one validation, clear errors."""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from ._checks import check_same_device, check_tensor, fail
from .quantize import FLOAT_DTYPES

OP = "attention"


def _broadcasts_to(shape: tuple, target: tuple) -> bool:
    """Whether ``shape`` broadcasts to exactly ``target``: right-aligned, every size 1 or the target's.  The
    same answer as ``torch.broadcast_shapes(shape, target) == target``, which costs ~25 us a call in Python
    (torch._refs with symbolic-shape guards): a fifth of a decode step's attention call."""
    return len(shape) <= len(target) and all(s == t or s == 1 for s, t in zip(reversed(shape), reversed(target)))


def validate(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, causal_bottom_right) -> None:
    """Raises ValueError / TypeError naming the argument unless the call is one ``llmaccel.attention`` accepts."""
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
        if not _broadcasts_to(tuple(attn_mask.shape), target):
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


def resolve_scale(scale: Optional[float], D: int) -> float:
    if scale is not None:
        return float(scale)
    return 1.0 / math.sqrt(D) if D > 0 else 1.0


def mask4(attn_mask: Optional[Tensor]) -> Optional[Tensor]:
    """The mask as a 4-D view (leading size-1 dims added; no copy)."""
    if attn_mask is None:
        return None
    m = attn_mask
    while m.dim() < 4:
        m = m.unsqueeze(0)
    return m
