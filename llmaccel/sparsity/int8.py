"""Symmetric per-output-channel int8 quantization of a pruned weight (the int8 formats' values).

For row ``n`` of the pruned weight ``P = where(mask, W, 0)``::

    scale[n] = max_k |P[n, k]| / 127          (fp32; 1.0 for a row with nothing kept or all zeros)
    q[n, k]  = clamp(round_half_even(P[n, k] / scale[n]), -127, 127)       (int8)
    dequantized = q.float() * scale[:, None]  (fp32)   and   |dequantized - P| <= scale / 2

This is ``Int8Linear``'s quantization (absmax over the kept values, since
pruned ones are zero), with two differences that only matter at the edges:
the quotient is taken in float64, and a scale that lands in fp32's subnormal
range is rounded *up* to the next fp32 value.  Rounding to nearest there can
lose up to half of a scale only a few ulps wide, which would push
``max|P| / scale`` past 127.5 and break the ``scale / 2`` bound through the
clamp; a scale no smaller than ``max|P| / 127`` keeps every quotient within
[-127, 127].  In the normal range the fp32 rounding moves the quotient by at
most 127 * 2**-24, so rounding to nearest is kept there.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["quantize_int8_per_row"]


def quantize_int8_per_row(pruned: Tensor) -> tuple[Tensor, Tensor]:
    """``pruned [N, K]`` float (already ``where(mask, W, 0)``) -> ``(q int8 [N, K], scale fp32 [N])``."""
    w = pruned.detach().to(torch.float32)  # exact for fp16 / bf16 / fp32
    absmax = w.abs().amax(dim=1)
    scale = absmax / 127.0
    tiny = torch.finfo(torch.float32).tiny
    rounded_down = scale.double() < absmax.double() / 127.0
    bump = rounded_down & (scale < tiny)
    scale = torch.where(bump, torch.nextafter(scale, torch.full_like(scale, float("inf"))), scale)
    scale = torch.where(absmax > 0, scale, torch.ones_like(scale))
    q = torch.round(w.double() / scale.double().unsqueeze(1)).clamp_(-127, 127).to(torch.int8)
    return q, scale


def dequantize(q: Tensor, scale: Tensor) -> Tensor:
    """``q.float() * scale[:, None]`` in fp32: the weight an int8 format stands for."""
    return q.to(torch.float32) * scale.unsqueeze(1)
