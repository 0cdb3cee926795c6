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
from ._checks import check_same_device, check_tensor, fail

OP = "int8_mm"
MAX_K = (1 << 31) // (128 * 128) - 1  # 131071; mirrors kInt8MMMaxK in csrc/int8_mm.h


def _validate(a, b) -> None:
    check_tensor(OP, "a", a, dtype=torch.int8, ndim=2)
    check_tensor(OP, "b", b, dtype=torch.int8, ndim=2)
    check_same_device(OP, a=a, b=b)
    if a.shape[1] != b.shape[0]:
        fail(OP, f"a is [M, K] = {list(a.shape)} and b is [K, N] = {list(b.shape)}: their K differ")
    if a.shape[1] > MAX_K:
        fail(OP, f"K = {a.shape[1]} exceeds {MAX_K}: an exact int8 dot product that long can overflow int32")


def int8_mm_reference(a: Tensor, b: Tensor) -> Tensor:
    """Plain-PyTorch int8_mm: exact, any device (float64 holds every partial sum exactly)."""
    return torch.matmul(a.to(torch.float64), b.to(torch.float64)).to(torch.int32)


_dispatch = backends.dispatcher(OP, device_of=lambda a, b: a.device)


@_dispatch.register("torch")
def _int8_mm_torch(a: Tensor, b: Tensor) -> Tensor:
    return int8_mm_reference(a, b)


def int8_mm_cpp(a: Tensor, b: Tensor, variant: str = "") -> Tensor:
    """The C++ kernel; ``variant`` forces one ISA variant (see ``llmaccel.cpu_info()``), "" picks the best."""
    M, K = a.shape
    N = b.shape[1]
    out = torch.empty((M, N), dtype=torch.int32, device=a.device)
    ext().int8_mm(M, N, K, a.data_ptr(), a.stride(0), a.stride(1), b.data_ptr(), b.stride(0), b.stride(1),
                  out.data_ptr(), out.stride(0), out.stride(1), torch.get_num_threads(), variant)
    return out


_dispatch.register("cpp")(int8_mm_cpp)


def _triton_check(a: Tensor, b: Tensor):
    return backends.int8_dot_problem(a.device)


@_dispatch.register("triton", check=_triton_check)
def _int8_mm_triton(a: Tensor, b: Tensor) -> Tensor:
    from ..kernels.int8_mm import int8_mm as triton_int8_mm

    return triton_int8_mm(a, b)


def _int8_mm_body(a: Tensor, b: Tensor) -> Tensor:
    _validate(a, b)
    return _dispatch(a, b)


@torch.library.custom_op("llmaccel::int8_mm", mutates_args=())
def _int8_mm_op(a: Tensor, b: Tensor) -> Tensor:
    return _int8_mm_body(a, b)


@_int8_mm_op.register_fake
def _int8_mm_fake(a: Tensor, b: Tensor) -> Tensor:
    _validate(a, b)
    return a.new_empty((a.shape[0], b.shape[1]), dtype=torch.int32)


def int8_mm(a: Tensor, b: Tensor) -> Tensor:
    """``out[m, n] = sum_k a[m, k] * b[k, n]``: int8 [M, K] @ int8 [K, N] -> int32 [M, N], exact.

    Runs ``torch.ops.llmaccel.int8_mm`` (so it traces under ``torch.compile``; plain eager calls skip the
    custom-op layer, see :func:`llmaccel.backends.call_op`);
    the backend follows :mod:`llmaccel.backends`.
    """
    # Validation happens in the op's body (so direct torch.ops calls get it too).
    return backends.call_op(torch.ops.llmaccel.int8_mm, _int8_mm_body, a, b)


_dispatch.set_public(int8_mm, validate=_validate)  # the arguments backends.explain accepts
