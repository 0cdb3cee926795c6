"""``llmaccel.quantize_per_token``: symmetric absmax int8 quantization of each row.

Math (the documented truth; :func:`quantize_per_token_reference`)::

    x      : float [..., K]                 (fp32 / fp16 / bf16)
    absmax : fp32  [...]      = max_k |x[..., k]|
    scale  : fp32  [...]      = absmax / 127        (1.0 where that is 0: an all-zero row,
                                                     or one so tiny the scale underflows)
    q      : int8  [..., K]   = clamp(round_half_even(x / scale), -127, 127)   (x / scale in float64)

so ``x ~= q * scale[..., None]`` with |error| <= scale / 2 per element.
-128 is never produced, which keeps the grid symmetric.  Backends may compute
``x * (1 / scale)`` instead of ``x / scale``; the two differ by at most one
ulp, so a value within an ulp of a rounding tie may land one step away.
Non-finite input: a row holding NaN or +-Inf gets ``scale = NaN`` and ``q = 0``,
on every backend, so everything computed from that row is NaN (a
dequantized value, an ``int8_linear(act="dynamic")`` output row), as an fp32
``F.linear`` gives NaN or +-Inf there.  A quantized model never turns a
NaN into a plausible finite number.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._ext import ext
from ._cpp_views import view
from ._checks import check_tensor, fail
from .spec import OpSpec, define

__all__ = ["quantize_per_token", "quantize_per_token_reference"]

OP = "quantize_per_token"
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _check(x):
    """Validates the call; returns the arguments object every backend trusts."""
    check_tensor(OP, "x", x)
    if x.dtype not in FLOAT_DTYPES:
        fail(OP, f"x must be float32, float16 or bfloat16, got {x.dtype}", TypeError)
    if x.dim() < 1:
        fail(OP, "x must have at least one dimension (the K axis last)")
    return _make_args((x,))


def quantize_per_token_reference(x: Tensor) -> tuple[Tensor, Tensor]:
    """Plain-PyTorch per-token quantization (see module docstring)."""
    xf = x.to(torch.float32)
    absmax = xf.abs().amax(dim=-1) if x.shape[-1] > 0 else xf.new_zeros(x.shape[:-1])
    scale = absmax / 127.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    # float64 division: for tiny rows 1 / scale would overflow fp32.
    q = torch.round(xf.double() / scale.double().unsqueeze(-1)).clamp(-127, 127)
    # A NaN / Inf anywhere in the row: absmax is NaN or Inf (amax propagates NaN).
    nonfinite = ~torch.isfinite(absmax)
    if nonfinite.any():
        scale = scale.masked_fill(nonfinite, float("nan"))
        q = q.masked_fill(nonfinite.unsqueeze(-1), 0)
    return q.to(torch.int8), scale


_op = define(OpSpec(
    name=OP,
    schema="(Tensor x) -> (Tensor, Tensor)",
    check=_check,
    fake=lambda args: (args.x.new_empty(args.x.shape, dtype=torch.int8),
                       args.x.new_empty(args.x.shape[:-1], dtype=torch.float32)),
))
_make_args = _op.pack
_op.implement("torch")(lambda args: quantize_per_token_reference(args.x))


@_op.implement("cpp")
def _quantize_per_token_cpp(args) -> tuple[Tensor, Tensor]:
    # csrc/quantize.cpp works on fp32 rows; half inputs are widened first
    # (exact), which the kernel would have to do anyway.
    x = args.x
    K = x.shape[-1]
    x2 = x.reshape(x.shape[:-1].numel(), K).to(torch.float32)
    if K > 0 and x2.stride(-1) != 1:
        x2 = x2.contiguous()
    M = x2.shape[0]
    q = torch.empty((M, K), dtype=torch.int8)
    scale = torch.empty((M,), dtype=torch.float32)
    if M > 0:
        ext().quantize_per_token(view(x2), view(q), view(scale), torch.get_num_threads())
    return q.reshape(x.shape), scale.reshape(x.shape[:-1])


@_op.implement("triton")  # plain loads/stores and reductions: any GPU Triton supports
def _quantize_per_token_triton(args) -> tuple[Tensor, Tensor]:
    from ..kernels.quantize import quantize_per_token as triton_quantize_per_token

    return triton_quantize_per_token(args.x)


@_op.public
def quantize_per_token(x: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric absmax int8 per row: returns ``(q int8 [..., K], scale fp32 [...])`` with ``x ~= q * scale``."""
    return _op.call(x)
