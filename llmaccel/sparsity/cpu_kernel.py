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

from torch import Tensor

from .._ext import ext
from ..ops._cpp_views import view, view_or_none
from ._cpu_args import bound_rows_call, check_cpu_weight, check_x_bias_variant, row_major
from .nm_packed import NMPackedWeight

__all__ = ["nm_linear_cpp", "nm_i8_linear_raw"]

_WHERE = "llmaccel.sparsity.nm_linear_cpp"


def nm_linear_cpp(x: Tensor, weight: NMPackedWeight, bias: Tensor | None = None, variant: str = "") -> Tensor:
    """``x @ weight.to_dense().T + bias`` with the C++ N:M kernel (module docstring)."""
    check_cpu_weight(_WHERE, weight, NMPackedWeight)
    n_out, k = weight.shape
    bias = check_x_bias_variant(_WHERE, x, bias, variant, n_out, k)

    lead = x.shape[:-1]
    y = nm_linear_raw(x.detach().reshape(-1, k), weight.values, weight.indices, weight.scale, bias,
                      weight.n, weight.m, variant)
    return y.view(*lead, n_out)


def nm_linear_raw(x2: Tensor, values: Tensor, indices: Tensor, scale: Tensor | None, bias: Tensor | None,
                  n: int, m: int, variant: str = "", binding: str = "sparse_nm_linear") -> Tensor:
    """The binding call on already checked fields: fp32 ``x2 [rows, K]`` (any strides), the N:M ``values``
    ``[N, G*n]`` (fp32, or int8 with fp32 ``scale [N]``) and packed ``indices``, fp32 ``bias [N]`` or None;
    returns fp32 ``y [rows, N]``.  Shared by :func:`nm_linear_cpp` and the ``sparse_linear`` op's cpp
    backend, so the pointer / stride set-up exists once (the C++ entry still validates what it is handed).
    ``binding``: the ``llmaccel._C`` function with these arguments (``"sparse_nm_large_linear"``: the large-M
    kernel, ``sparsity.cpu_nm_large``)."""
    return nm_linear_bound(values, indices, scale, bias, n, m, x2.shape[1], variant, binding)(x2)


def nm_linear_bound(values: Tensor, indices: Tensor, scale: Tensor | None, bias: Tensor | None, n: int, m: int,
                    K: int, variant: str = "", binding: str = "sparse_nm_linear"):
    """:func:`nm_linear_raw` with the weight side bound once: ``run(x2)`` for fp32 ``x2 [rows, K]``.  The weight
    side's views (csrc/tensor_view.h) are built here, x's and y's per call; the closure holds every tensor a view
    points at (the prepared decode call keeps one per layer).  ``binding="sparse_nm_i8_linear"``: the
    int8-activation kernel (same arguments)."""
    values, indices = row_major(values), row_major(indices)
    scale = scale.contiguous() if scale is not None else None
    N = values.shape[0]
    w_views = (view(values), view(indices), view_or_none(scale), view_or_none(bias))
    return bound_rows_call(getattr(ext(), binding), w_views, N, (n, m), variant, (values, indices, scale, bias))


def nm_i8_linear_raw(x2: Tensor, values: Tensor, indices: Tensor, scale: Tensor, bias: Tensor | None, n: int, m: int,
                     variant: str = "") -> Tensor:
    """The int8-activation binding (``llmaccel._C.sparse_nm_i8_linear``, csrc/sparse_nm.h) on already checked
    fields: fp32 ``x2 [rows, K]`` quantized per token inside, int8 ``values`` in [-127, 127] with fp32
    ``scale [N]``; returns fp32 ``y = float(xq @ q.T) * sx * scale + bias``."""
    return nm_i8_linear_bound(values, indices, scale, bias, n, m, x2.shape[1], variant)(x2)


def nm_i8_linear_bound(values: Tensor, indices: Tensor, scale: Tensor, bias: Tensor | None, n: int, m: int, K: int,
                       variant: str = ""):
    """:func:`nm_i8_linear_raw` with the weight side bound once: ``run(x2)`` for fp32 ``x2 [rows, K]``."""
    return nm_linear_bound(values, indices, scale, bias, n, m, K, variant, "sparse_nm_i8_linear")
