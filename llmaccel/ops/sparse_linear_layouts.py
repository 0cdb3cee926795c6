"""The compressed weight formats of ``llmaccel.sparsity`` as the plain tensors of the ``sparse_linear`` op.

A custom op takes tensors, ints and strings, not format objects, so each format
travels as ``(values, index, offsets, scale, layout, meta)``:

==========  =========================  ==============================  ====================  =================
layout      values                     index                           offsets               meta
==========  =========================  ==============================  ====================  =================
``"nm"``    [N_out, G*n]               uint8 packed slot indices       None                  [n, m]
``"bitmap"`` [nnz]                     uint8 bitmap [N_out, ceil(K/8)]  int64 row_offsets      []
``"bsr"``   [nnzb, bh, bw] tiles       int32 col_indices [nnzb]        int64 crow_indices    [N_out]
==========  =========================  ==============================  ====================  =================

``scale`` is the int8 formats' fp32 per-output-channel scale (values int8), else None.  K is x's last
dimension (the formats' ``shape[1]``).  :func:`fields_of` and :func:`weight_of` convert between a format
object and these fields; :func:`values_grad` is the gradient of the dense expansion with respect to the
stored values (a gather at the kept positions).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..sparsity.bitmap import BitmapWeight
from ..sparsity.bsr import BSRWeight
from ..sparsity.nm_packed import NMPackedWeight

__all__ = ["LAYOUTS", "fields_of", "weight_of", "values_grad", "out_features"]

LAYOUTS = ("nm", "bitmap", "bsr")


def fields_of(weight) -> tuple[Tensor, Tensor, Optional[Tensor], Optional[Tensor], str, list[int]]:
    """``(values, index, offsets, scale, layout, meta)`` of a format object (module docstring)."""
    if isinstance(weight, NMPackedWeight):
        return weight.values, weight.indices, None, weight.scale, "nm", [weight.n, weight.m]
    if isinstance(weight, BitmapWeight):
        return weight.values, weight.bitmap, weight.row_offsets, weight.scale, "bitmap", []
    if isinstance(weight, BSRWeight):
        return weight.values, weight.col_indices, weight.crow_indices, weight.scale, "bsr", [weight.shape[0]]
    raise TypeError(f"llmaccel.sparse_linear: weight must be an NMPackedWeight, BitmapWeight or BSRWeight, got "
                    f"{type(weight).__name__}")


def out_features(values: Tensor, index: Tensor, layout: str, meta) -> int:
    if layout == "nm":
        return values.shape[0]
    if layout == "bitmap":
        return index.shape[0]
    return meta[0]


def weight_of(k: int, values: Tensor, index: Tensor, offsets, scale, layout: str, meta, *, trusted: bool = False):
    """The format object these fields describe.  Its constructor checks every field (a pass over the data);
    ``trusted=True`` skips that, for per-call paths on fields a module already checked."""
    n_out = out_features(values, index, layout, meta)
    if layout == "nm":
        cls, fields = NMPackedWeight, dict(values=values, indices=index, pattern=(meta[0], meta[1]))
    elif layout == "bitmap":
        cls, fields = BitmapWeight, dict(bitmap=index, values=values, row_offsets=offsets)
    else:
        cls, fields = BSRWeight, dict(values=values, col_indices=index, crow_indices=offsets,
                                      block_size=(values.shape[1], values.shape[2]))
    fields.update(shape=(n_out, k), scale=scale)
    return cls._trusted(**fields) if trusted else cls(**fields)


def values_grad(weight, grad_dense: Tensor) -> Tensor:
    """d(loss)/d(values) given ``grad_dense`` = d(loss)/d(weight.to_dense()) [N_out, K] (float formats).

    ``to_dense`` puts each stored value at one position of the dense weight, so its gradient is
    ``grad_dense`` read back at those positions: N:M slots (a slot in a padding column past K gets 0),
    the bitmap's kept positions in row-major order, BSR tiles (edge padding gets 0).  Pruned positions
    have no value, so an optimizer step cannot make them non-zero.
    """
    rows, k = weight.shape
    if isinstance(weight, NMPackedWeight):
        padded = grad_dense.new_zeros((rows, weight.groups * weight.m))
        padded[:, :k] = grad_dense
        return torch.gather(padded, 1, weight._slot_columns().reshape(rows, -1))
    if isinstance(weight, BitmapWeight):
        return grad_dense[weight.mask()]
    (bh, bw), (tr, tc) = weight.block_size, weight.tile_grid
    padded = grad_dense.new_zeros((tr * bh, tc * bw))
    padded[:rows, :k] = grad_dense
    tiles = padded.view(tr, bh, tc, bw).permute(0, 2, 1, 3)
    return tiles[weight._tile_rows(), weight.col_indices.to(torch.int64)]
