"""``sparse_linear_reference``: the truth every sparse kernel is checked against.

For any compressed weight ``w`` (``NMPackedWeight``, ``BitmapWeight``, ``BSRWeight``,
float or int8)::

    y = x @ w.to_dense().T + bias          x [..., K] -> y [..., N_out]

computed the obvious way on the dense expansion (``torch.nn.functional.linear``),
so it is right by construction whatever the format.  ``to_dense()`` is exact
(int8: the dequantized ``q * scale``), which makes this the math of the
pruned layer, not an approximation of it.

* ``dtype=None``: in x's dtype (the weight and bias cast to it), the result a
  dense layer holding the pruned weight would give.
* ``dtype=torch.float64``: x, weight and bias in float64, result in float64;
  the reference to measure a kernel's rounding error against (fp32 kernels:
  within ~1e-5 relative of it).

``act="dynamic"`` (int8 formats only; the ``sparse_linear`` op's W8A8 mode): x is
quantized per token (``quantize_per_token_reference``: codes ``xq``, scales ``sx``)
and, with ``q = round(to_dense() / scale)`` the int8 codes of the weight (exact:
``to_dense()`` is ``q * scale`` to within half an ulp)::

    y = float32(xq @ q.T) * sx[:, None] * scale[None, :] + bias

the integer sum exact (float64), then int8_linear's fp32 epilogue in its order
(float64 throughout with ``dtype=torch.float64``), the result in x's dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .bitmap import BitmapWeight
from .bsr import BSRWeight
from .nm_packed import NMPackedWeight

__all__ = ["sparse_linear_reference", "FORMATS"]

FORMATS = (NMPackedWeight, BitmapWeight, BSRWeight)
_WHERE = "llmaccel.sparsity.sparse_linear_reference"


def sparse_linear_reference(x: Tensor, weight, bias: Tensor | None = None, *,
                            dtype: torch.dtype | None = None, act: str = "none") -> Tensor:
    """``x @ weight.to_dense().T + bias`` (module docstring); ``dtype=torch.float64`` for the exact reference."""
    if not isinstance(weight, FORMATS):
        raise TypeError(f"{_WHERE}: weight must be one of {[f.__name__ for f in FORMATS]}, "
                        f"got {type(weight).__name__}")
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError(f"{_WHERE}: x must be a floating-point torch.Tensor, got "
                        f"{x.dtype if isinstance(x, Tensor) else type(x).__name__}")
    n_out, k = weight.shape
    if x.dim() == 0 or x.shape[-1] != k:
        raise ValueError(f"{_WHERE}: x's last dimension must be in_features = {k}, got shape {tuple(x.shape)}")
    if bias is not None and (not isinstance(bias, Tensor) or bias.shape != (n_out,)):
        raise ValueError(f"{_WHERE}: bias must be a tensor of shape [out_features] = [{n_out}], got "
                         f"{tuple(bias.shape) if isinstance(bias, Tensor) else type(bias).__name__}")
    if dtype is not None and dtype != torch.float64:
        raise ValueError(f"{_WHERE}: dtype must be None (x's dtype) or torch.float64, got {dtype}")
    if act not in ("none", "dynamic"):
        raise ValueError(f"{_WHERE}: act must be 'none' or 'dynamic', got {act!r}")
    if act == "dynamic":
        return _dynamic_reference(x, weight, bias, dtype)
    compute = dtype if dtype is not None else x.dtype
    w = weight.to_dense().to(device=x.device, dtype=compute)
    b = bias.to(device=x.device, dtype=compute) if bias is not None else None
    return F.linear(x.to(compute), w, b)


def _dynamic_reference(x: Tensor, weight, bias: Tensor | None, dtype: torch.dtype | None) -> Tensor:
    """act='dynamic' (module docstring)."""
    from ..ops.quantize import quantize_per_token_reference

    if weight.scale is None:
        raise ValueError(f"{_WHERE}: act='dynamic' needs an int8 weight (packed with quantize='int8')")
    scale = weight.scale.to(device=x.device, dtype=torch.float64)
    codes = torch.round(weight.to_dense().to(device=x.device, dtype=torch.float64) / scale.unsqueeze(1))
    xq, sx = quantize_per_token_reference(x)
    acc = torch.matmul(xq.to(torch.float64), codes.t())  # |sum| < 2^53: exact
    if dtype == torch.float64:
        y = acc * sx.double().unsqueeze(-1) * scale
        return y + bias.to(device=x.device, dtype=torch.float64) if bias is not None else y
    y = acc.to(torch.float32) * sx.unsqueeze(-1) * scale.to(torch.float32)
    if bias is not None:
        y = y + bias.to(device=x.device, dtype=torch.float32)
    return y.to(x.dtype)
