"""``llmaccel.int8_mm``: exact int8 x int8 -> int32 matrix multiply.

Math (the documented truth; :func:`int8_mm_reference` computes it)::

    a   : int8  [M, K]     any strides
    b   : int8  [K, N]     any strides; often W.t() of an nn.Linear weight W [N, K]
    out : int32 [M, N]     out[m, n] = sum_k a[m, k] * b[k, n]     (exact)

Same contract as ``torch._int_mm`` but for any M, N, K >= 0 and any strides.
|out| <= K * 128 * 128, so K is limited to 131071: beyond that an exact
result may not fit in int32 and the op raises instead of wrapping.

Backends:

* ``cpp``   -- csrc/int8_mm*.cpp: AVX-512 VNNI (vpdpbusd, u8 x s8 with +128 /
  column-sum compensation), AVX2 (|b| x sign(b)*a with vpmaddubsw when a
  holds no -128, else the exact 16-bit vpmaddwd tile) or generic, chosen by
  CPUID.
* ``triton`` -- kernels/int8_mm.py: tiled ``tl.dot`` with an int32 accumulator.
* ``torch`` -- float64 matmul rounded to int32; exact, since every partial sum
  is an integer below 2**53.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import backends
from .._ext import ext
from ._cpp_views import view
from ._checks import check_same_device, check_tensor, fail
from .spec import OpSpec, define

__all__ = ["int8_mm", "int8_mm_reference"]

OP = "int8_mm"
MAX_K = (1 << 31) // (128 * 128) - 1  # 131071; mirrors kInt8MMMaxK in csrc/int8_mm.h


def _check(a, b):
    """Validates the call; returns the arguments object every backend trusts."""
    check_tensor(OP, "a", a, dtype=torch.int8, ndim=2)
    check_tensor(OP, "b", b, dtype=torch.int8, ndim=2)
    check_same_device(OP, a=a, b=b)
    if a.shape[1] != b.shape[0]:
        fail(OP, f"a is [M, K] = {list(a.shape)} and b is [K, N] = {list(b.shape)}: their K differ")
    if a.shape[1] > MAX_K:
        fail(OP, f"K = {a.shape[1]} exceeds {MAX_K}: an exact int8 dot product that long can overflow int32")
    return _make_args((a, b))


def int8_mm_reference(a: Tensor, b: Tensor) -> Tensor:
    """Plain-PyTorch int8_mm: exact, any device (float64 holds every partial sum exactly)."""
    return torch.matmul(a.to(torch.float64), b.to(torch.float64)).to(torch.int32)


def int8_mm_cpp(a: Tensor, b: Tensor, variant: str = "") -> Tensor:
    """The C++ kernel; ``variant`` forces one ISA variant (see ``llmaccel.cpu_info()``), "" picks the best."""
    M, K = a.shape
    N = b.shape[1]
    out = torch.empty((M, N), dtype=torch.int32, device=a.device)
    ext().int8_mm(view(a), view(b), view(out), torch.get_num_threads(), variant)
    return out


_op = define(OpSpec(
    name=OP,
    schema="(Tensor a, Tensor b) -> Tensor",
    check=_check,
    fake=lambda args: args.a.new_empty((args.a.shape[0], args.b.shape[1]), dtype=torch.int32),
))
_make_args = _op.pack
_op.implement("torch")(lambda args: int8_mm_reference(args.a, args.b))
_op.implement("cpp")(lambda args: int8_mm_cpp(args.a, args.b))


@_op.implement("triton", check=lambda args: backends.int8_dot_problem(args.a.device))
def _int8_mm_triton(args) -> Tensor:
    from ..kernels.int8_mm import int8_mm as triton_int8_mm

    return triton_int8_mm(args.a, args.b)


@_op.public
def int8_mm(a: Tensor, b: Tensor) -> Tensor:
    """``out[m, n] = sum_k a[m, k] * b[k, n]``: int8 [M, K] @ int8 [K, N] -> int32 [M, N], exact.

    Runs ``torch.ops.llmaccel.int8_mm`` (so it traces under ``torch.compile``; plain eager calls run the op's
    body directly, see :mod:`llmaccel.ops.spec`); the backend follows :mod:`llmaccel.backends`.
    """
    return _op.call(a, b)
