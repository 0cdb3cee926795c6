"""The column-index form of a bitmap weight, and the C++ kernel that streams it
(``llmaccel._C.sparse_bitmap_index_linear``, csrc/sparse_bitmap*.cpp).

At high sparsity the bitmap is the wrong thing to stream: the byte kernel's work is per bitmap byte (8
columns), and at 10 % density a byte holds 0.8 kept values.  The same weight with one uint16 column index per
kept value costs 16 bits per value instead of the bitmap's 10 (at 10 % density) but work per kept value only,
8 at a time with ``vgatherdps``::

    cols[t] = the column of values[t]       (uint16 [nnz]; row r's values are t in [row_offsets[r], row_offsets[r+1]))
    y[m, r] = sum_t x[m, cols[t]] * values[t]  (+ int8 scale) + bias[r]         (K <= 65536)

``column_indices`` derives ``cols`` from the bitmap once per weight (checked against ``row_offsets``) and
:func:`cached_column_indices` keeps it for the life of the bitmap tensor, like ``int8_linear``'s packed
weights: the sparse_linear op's cpp backend takes this route for bitmap weights at or below
``sparse_linear_routes.INDEX_MAX_DENSITY`` (measured), at the price of 2 bytes per kept value of memory
next to the bitmap.
"""

from __future__ import annotations

import threading
import weakref

import torch
from torch import Tensor

from .._ext import ext
from ..ops._cpp_views import view, view_or_none
from .._tensor_version import version
from ._cpu_args import bound_rows_call

__all__ = ["column_indices", "cached_column_indices", "bitmap_index_linear_raw", "bitmap_index_linear_bound",
           "MAX_K"]

MAX_K = 65536  # 16-bit column indices (csrc/sparse_bitmap.h kSparseIndexMaxK)
_WHERE = "llmaccel.sparsity.column_indices"


def column_indices(bitmap: Tensor, row_offsets: Tensor, K: int, nnz: int) -> Tensor:
    """uint16 ``[nnz]``: the column of each kept value, rows in order and columns ascending within a row (the
    order the bitmap format stores its values in).  ValueError where a row's set bits and its
    ``row_offsets`` disagree, or for K above :data:`MAX_K`."""
    if K > MAX_K:
        raise ValueError(f"{_WHERE}: K = {K} is above {MAX_K} (16-bit column indices)")
    N = bitmap.shape[0]
    shifts = torch.arange(8, dtype=torch.uint8)
    bits = ((bitmap.unsqueeze(-1) >> shifts) & 1).reshape(N, -1)[:, :K].to(torch.bool)
    rows, cols = bits.nonzero(as_tuple=True)
    counts = torch.bincount(rows, minlength=N)
    want = row_offsets[1:] - row_offsets[:-1]
    if not torch.equal(counts, want):
        bad = int((counts != want).nonzero()[0])
        raise ValueError(f"{_WHERE}: row {bad}'s bitmap sets {int(counts[bad])} bits but row_offsets gives it "
                         f"{int(want[bad])} values (a corrupt weight)")
    out = torch.zeros(nnz, dtype=torch.int32)
    start = int(row_offsets[0])
    out[start:start + cols.numel()] = cols.to(torch.int32)
    return out.to(torch.uint16)


# id(bitmap) -> (weakref to it, its version, row_offsets' version, cols): dropped when the bitmap dies,
# rebuilt when either tensor is modified in place.
_cache: dict[int, tuple[weakref.ref, int, int, Tensor]] = {}
_lock = threading.Lock()


def cached_column_indices(bitmap: Tensor, row_offsets: Tensor, K: int, nnz: int) -> Tensor:
    """:func:`column_indices`, built once per bitmap tensor (module docstring)."""
    key = id(bitmap)
    vb, vr = version(bitmap), version(row_offsets)
    if vb is None or vr is None:  # an inference tensor: no version counter, so no entry can be trusted
        return column_indices(bitmap, row_offsets, K, nnz)
    hit = _cache.get(key)
    if hit is not None and hit[0]() is bitmap and hit[1] == vb and hit[2] == vr and hit[3].numel() == nnz:
        return hit[3]
    with _lock:
        cols = column_indices(bitmap, row_offsets, K, nnz)
        ref = weakref.ref(bitmap, lambda _, key=key: _cache.pop(key, None))
        _cache[key] = (ref, vb, vr, cols)
        return cols


def bitmap_index_linear_raw(x2: Tensor, cols: Tensor, values: Tensor, row_offsets: Tensor, scale: Tensor | None,
                            bias: Tensor | None, variant: str = "") -> Tensor:
    """The binding call: fp32 ``x2 [rows, K]`` (any strides), uint16 ``cols [nnz]``, ``values [nnz]`` (fp32, or
    int8 with fp32 ``scale [N]``), int64 ``row_offsets [N + 1]``, fp32 ``bias [N]`` or None; fp32
    ``y [rows, N]``.  The C++ entry validates pointers, sizes and the offsets, and clamps the indices."""
    return bitmap_index_linear_bound(cols, values, row_offsets, scale, bias, variant)(x2)


def bitmap_index_linear_bound(cols: Tensor, values: Tensor, row_offsets: Tensor, scale: Tensor | None,
                              bias: Tensor | None, variant: str = ""):
    """:func:`bitmap_index_linear_raw` with the weight side bound once: ``run(x2)`` for fp32 ``x2 [rows, K]``
    (the closure holds every tensor a view points at)."""
    values, row_offsets, cols = values.contiguous(), row_offsets.contiguous(), cols.contiguous()
    scale = scale.contiguous() if scale is not None else None
    N = row_offsets.shape[0] - 1
    w_views = (view(values), view(cols), view(row_offsets), view_or_none(scale), view_or_none(bias))
    return bound_rows_call(ext().sparse_bitmap_index_linear, w_views, N, (), variant,
                           (cols, values, row_offsets, scale, bias))
