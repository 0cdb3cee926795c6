"""``bitmap_linear_cpp``: the C++ unstructured-sparse linear (``llmaccel._C.sparse_bitmap_linear``) on a
``BitmapWeight``.

::

    y = bitmap_linear_cpp(x, weight, bias)          # == x @ weight.to_dense().T + bias, fp32
    y = bitmap_linear_cpp(x, weight, variant="generic")

Math, with ``W`` the pruned weight ``[N_out, K]`` (bitmap bit ``(r, c)`` set: ``W[r, c]`` is the next
value of row r's packed values; clear: 0)::

    y[m, r] = sum_{c : bit (r, c) set} x[m, c] * values[row_offsets[r] + #(set bits of row r before c)]  + bias[r]
    int8:     scale[r] * (the same sum over q) + bias[r]

The kernel (csrc/sparse_bitmap*.cpp) streams the bitmap and the packed values and never expands the weight
in memory: the AVX2 variant expands each bitmap byte into 8 lanes in registers (a 256-entry permutation
table, ``vpermps``; int8: ``pshufb``); ``"generic"`` is one scalar multiply-add per kept weight.  fp32
values, or int8 values with per-row scales; CPU tensors; x ``[..., K]`` with any leading dims and strides
(a row whose elements are not contiguous is copied); output fp32 ``[..., N_out]``.  ``variant`` is ``""``
(the best this CPU runs, ``llmaccel.cpu_info()["variants"]["sparse_bitmap"]``) or a name from
``llmaccel.cpu_info()["available_variants"]["sparse_bitmap"]``.  Inference only: no autograd.

The kernel checks each row's bitmap popcount against ``row_offsets`` before it reads the row's values, so
fields that disagree (a corrupt weight) raise ``ValueError`` naming ``bitmap`` and ``row_offsets``, never
read outside the tensors.  Non-finite x: the AVX2 variant multiplies x by 0 at pruned columns (inf there
gives NaN, as the dense reference does); the generic one reads x only at kept columns.
"""

from __future__ import annotations

from torch import Tensor

from .._ext import ext
from ..ops._cpp_views import view, view_or_none
from ._cpu_args import bound_rows_call, check_cpu_weight, check_x_bias_variant, row_major
from .bitmap import BitmapWeight

__all__ = ["bitmap_linear_cpp", "bitmap_linear_raw", "bitmap_linear_bound"]

_WHERE = "llmaccel.sparsity.bitmap_linear_cpp"


def bitmap_linear_cpp(x: Tensor, weight: BitmapWeight, bias: Tensor | None = None, variant: str = "") -> Tensor:
    """``x @ weight.to_dense().T + bias`` with the C++ bitmap kernel (module docstring)."""
    check_cpu_weight(_WHERE, weight, BitmapWeight)
    n_out, k = weight.shape
    bias = check_x_bias_variant(_WHERE, x, bias, variant, n_out, k)
    y = bitmap_linear_raw(x.detach().reshape(-1, k), weight.bitmap, weight.values, weight.row_offsets, weight.scale,
                          bias, variant)
    return y.view(*x.shape[:-1], n_out)


def bitmap_linear_raw(x2: Tensor, bitmap: Tensor, values: Tensor, row_offsets: Tensor, scale: Tensor | None,
                      bias: Tensor | None, variant: str = "") -> Tensor:
    """The binding call on already checked shapes and dtypes: fp32 ``x2 [rows, K]`` (any strides), uint8
    ``bitmap [N, ceil(K/8)]``, ``values [nnz]`` (fp32, or int8 with fp32 ``scale [N]``), int64
    ``row_offsets [N + 1]``, fp32 ``bias [N]`` or None; returns fp32 ``y [rows, N]``.  Shared by
    :func:`bitmap_linear_cpp` and the ``sparse_linear`` op's cpp backend; the C++ entry validates what it is
    handed (pointers, sizes, strides, and the offsets against the bitmap)."""
    return bitmap_linear_bound(bitmap, values, row_offsets, scale, bias, variant)(x2)


def bitmap_linear_bound(bitmap: Tensor, values: Tensor, row_offsets: Tensor, scale: Tensor | None,
                        bias: Tensor | None, variant: str = ""):
    """:func:`bitmap_linear_raw` with the weight side bound once: ``run(x2)`` for fp32 ``x2 [rows, K]``.  The
    weight side's views (csrc/tensor_view.h) are built here, x's and y's per call; the closure holds every
    tensor a view points at (a layer's prepared decode call keeps one)."""
    bitmap = row_major(bitmap)
    values, row_offsets = values.contiguous(), row_offsets.contiguous()
    scale = scale.contiguous() if scale is not None else None
    N = bitmap.shape[0]
    w_views = (view(values), view(bitmap), view(row_offsets), view_or_none(scale), view_or_none(bias))
    return bound_rows_call(ext().sparse_bitmap_linear, w_views, N, (), variant,
                           (bitmap, values, row_offsets, scale, bias))
