"""``nm_linear_cpp``: the C++ N:M-sparse linear (``llmaccel._C.sparse_nm_linear``) on an ``NMPackedWeight``.

::

    y = nm_linear_cpp(x, packed, bias)          # == x @ packed.to_dense().T + bias, fp32
    y = nm_linear_cpp(x, packed, variant="generic")

A thin wrapper over the raw binding (csrc/sparse_nm.h): fp32 values, or
int8 values with per-row scales (``quantize="int8"``: the kernel converts
them in registers and computes ``scale[n] * sum_k x[k] q[n, k] + bias[n]``),
CPU tensors, x ``[..., K]`` with any leading dims and any strides (a row
whose elements are not contiguous is copied), output
fp32 ``[..., N_out]``.  The kernel streams the compressed values and index
bits and never expands the weight.  ``variant`` is ``""`` (the best this CPU
runs, ``llmaccel.cpu_info()["variants"]["sparse_nm"]``) or a name from
``llmaccel.cpu_info()["available_variants"]["sparse_nm"]`` (``"avx2"``:
vectorized 2:4, other patterns through the portable loop; ``"generic"``).
Inference only: no autograd (the result does not require grad).

Slots pointing at padding columns (past K) are never read, so an inf or NaN
in x only reaches the outputs whose weight row keeps that column: unlike the
dense reference, ``0 * inf`` at a pruned column does not turn an output NaN.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._ext import ext
from .nm_packed import NMPackedWeight

__all__ = ["nm_linear_cpp"]

_WHERE = "llmaccel.sparsity.nm_linear_cpp"


def nm_linear_cpp(x: Tensor, weight: NMPackedWeight, bias: Tensor | None = None, variant: str = "") -> Tensor:
    """``x @ weight.to_dense().T + bias`` with the C++ N:M kernel (module docstring)."""
    if not isinstance(weight, NMPackedWeight):
        raise TypeError(f"{_WHERE}: weight must be an NMPackedWeight, got {type(weight).__name__}")
    x2, bias = check_kernel_call(_WHERE, x, weight, bias, variant)
    y = nm_linear_raw(x2, weight.values, weight.indices, weight.scale, bias, weight.n, weight.m, variant)
    return y.view(*x.shape[:-1], weight.shape[0])


def check_kernel_call(where: str, x: Tensor, weight, bias: Tensor | None, variant: str) -> tuple[Tensor, Tensor | None]:
    """The checks every C++ sparse-kernel wrapper makes (``where`` names it) once it has checked the weight's
    type: fp32 or int8 weight values on the CPU, fp32 CPU ``x [..., in_features]``, fp32 ``bias
    [out_features]`` or None, a str ``variant``.  Returns x detached as ``[rows, in_features]`` and the bias
    detached and contiguous."""
    if not weight.quantized and weight.values.dtype != torch.float32:
        raise ValueError(f"{where}: weight values must be float32 (or int8 with scales), got "
                         f"{weight.values.dtype} (pack a float32 weight)")
    if weight.values.device.type != "cpu":
        raise ValueError(f"{where}: weight must be on the CPU, got {weight.values.device}")
    if not isinstance(x, Tensor):
        raise TypeError(f"{where}: x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype != torch.float32:
        raise ValueError(f"{where}: x must be float32, got {x.dtype}")
    if x.device.type != "cpu":
        raise ValueError(f"{where}: x must be on the CPU, got {x.device}")
    n_out, k = weight.shape
    if x.dim() == 0 or x.shape[-1] != k:
        raise ValueError(f"{where}: x's last dimension must be in_features = {k}, got shape {tuple(x.shape)}")
    if bias is not None:
        if not isinstance(bias, Tensor):
            raise TypeError(f"{where}: bias must be a torch.Tensor or None, got {type(bias).__name__}")
        if bias.dtype != torch.float32 or bias.device.type != "cpu" or bias.shape != (n_out,):
            raise ValueError(f"{where}: bias must be a float32 CPU tensor of shape [out_features] = [{n_out}], "
                             f"got {bias.dtype} {tuple(bias.shape)} on {bias.device}")
        bias = bias.detach().contiguous()
    if not isinstance(variant, str):
        raise TypeError(f"{where}: variant must be a str, got {type(variant).__name__}")
    return x.detach().reshape(-1, k), bias


def row_major(t: Tensor) -> Tensor:
    """``t`` [R, C] itself when its rows are unit-stride and do not overlap, else a contiguous copy."""
    return t if t.shape[1] <= 1 or (t.stride(1) == 1 and t.stride(0) >= t.shape[1]) else t.contiguous()


def nm_linear_raw(x2: Tensor, values: Tensor, indices: Tensor, scale: Tensor | None, bias: Tensor | None,
                  n: int, m: int, variant: str = "") -> Tensor:
    """The binding call on already checked fields: fp32 ``x2 [rows, K]`` (any strides), the N:M ``values``
    ``[N, G*n]`` (fp32, or int8 with fp32 ``scale [N]``) and packed ``indices``, fp32 ``bias [N]`` or None;
    returns fp32 ``y [rows, N]``.  Shared by :func:`nm_linear_cpp` and the ``sparse_linear`` op's cpp
    backend, so the pointer / stride set-up exists once (the C++ entry still validates what it is handed)."""
    K = x2.shape[1]
    x2, values, indices = row_major(x2), row_major(values), row_major(indices)
    scale = scale.contiguous() if scale is not None else None
    rows, N = x2.shape[0], values.shape[0]
    y = torch.empty((rows, N), dtype=torch.float32)
    ext().sparse_nm_linear(rows, N, K, n, m, x2.data_ptr(), x2.stride(0) if rows > 1 else K,
                           values.data_ptr(), scale is not None, values.stride(0) if N > 1 else values.shape[1],
                           indices.data_ptr(), indices.stride(0) if N > 1 else indices.shape[1],
                           scale.data_ptr() if scale is not None else 0, bias.data_ptr() if bias is not None else 0,
                           y.data_ptr(), N, torch.get_num_threads(), variant)
    return y
