"""``BSRWeight``: a block-sparse weight as dense tiles in block compressed sparse row order.

The weight ``[N_out, K]`` is tiled by ``block_size = (bh, bw)`` from the
top-left into ``R = ceil(N_out / bh)`` tile rows and ``T = ceil(K / bw)`` tile
columns; edge tiles are padded with zeros to the full block size::

    values       [nnzb, bh, bw]     the kept tiles, tile row by tile row, columns ascending (float, or int8)
    col_indices  int32 [nnzb]       each tile's tile column, in [0, T)
    crow_indices int64 [R + 1]      tile row i's tiles are values[crow[i] : crow[i+1]]
    shape        (N_out, K)         the true (unpadded) shape
    scale        fp32 [N_out] | None  int8 only: dequantized row n = values row n * scale[n]

    dense[i*bh : (i+1)*bh, c*bw : (c+1)*bw] = values[t]   for t in crow[i]..crow[i+1]-1, c = col_indices[t]

That is ``torch.sparse_bsr_tensor``'s layout, with the true shape kept and
the edge padding explicit, so any shape works.  A tile is stored when the
mask keeps any weight in it; inside a stored tile the pruned weights are
zeros, so the round trip is exact for any mask (and compact for ``prune``'s
``"block"`` masks).  The padding of edge tiles must be zero (checked).

``to_dense()`` returns ``torch.where(mask, weight, 0)`` bit for bit (int8:
the fp32 dequantized weight).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from . import _checks as C
from ._format import CompressedWeight
from .int8 import quantize_int8_per_row

__all__ = ["BSRWeight"]

_NAME = "BSRWeight"


@dataclass(frozen=True, eq=False)
class BSRWeight(CompressedWeight):
    """Block compressed sparse row weight (module docstring).  Build with :meth:`from_dense`."""

    NAME = _NAME
    TENSORS = ('values', 'col_indices', 'crow_indices')
    PAIRS = ('shape', 'block_size')

    values: Tensor
    col_indices: Tensor
    crow_indices: Tensor
    shape: tuple[int, int]
    block_size: tuple[int, int]
    scale: Tensor | None = None

    @property
    def tile_grid(self) -> tuple[int, int]:
        """(R, T): tile rows and tile columns of the padded weight."""
        (rows, k), (bh, bw) = self.shape, self.block_size
        return -(-rows // bh), -(-k // bw)

    def __post_init__(self) -> None:
        where = _NAME
        rows, k = C.check_int_pair(self.shape, where, "shape")
        bh, bw = C.check_int_pair(self.block_size, where, "block_size")
        object.__setattr__(self, "shape", (rows, k))  # plain ints, whatever sequence was passed
        object.__setattr__(self, "block_size", (bh, bw))
        tr, tc = self.tile_grid
        C.check_field(self.values, where, "values", shape=(None, bh, bw))
        C.check_values_and_scale(self.values, self.scale, rows, where)
        nnzb = self.values.shape[0]
        C.check_field(self.col_indices, where, "col_indices", dtype=torch.int32, shape=(nnzb,))
        C.check_field(self.crow_indices, where, "crow_indices", dtype=torch.int64, shape=(tr + 1,))
        C.check_same_device(where, values=self.values, col_indices=self.col_indices, crow_indices=self.crow_indices)
        crow, col = self.crow_indices, self.col_indices.to(torch.int64)
        steps = crow[1:] - crow[:-1]
        if int(crow[0]) != 0 or int(crow[-1]) != nnzb or bool((steps < 0).any()):
            raise ValueError(f"{where}: field 'crow_indices' must run from 0 to nnzb = {nnzb} without decreasing")
        if bool(((col < 0) | (col >= tc)).any()):
            raise ValueError(f"{where}: field 'col_indices' holds a tile column outside [0, {tc})")
        tile_row = self._tile_rows()
        if bool(((col[1:] <= col[:-1]) & (tile_row[1:] == tile_row[:-1])).any()):
            raise ValueError(f"{where}: field 'col_indices' must be strictly increasing within each tile row")
        pad_rows = tr * bh - rows
        if pad_rows and bool((self.values[tile_row == tr - 1, bh - pad_rows:, :] != 0).any()):
            raise ValueError(f"{where}: field 'values' holds a non-zero in the padding rows of a bottom edge tile")
        pad_cols = tc * bw - k
        if pad_cols and bool((self.values[col == tc - 1, :, bw - pad_cols:] != 0).any()):
            raise ValueError(f"{where}: field 'values' holds a non-zero in the padding columns of a right edge tile")

    def _tile_rows(self) -> Tensor:
        steps = self.crow_indices[1:] - self.crow_indices[:-1]
        return torch.repeat_interleave(torch.arange(steps.numel(), device=steps.device), steps)

    @classmethod
    def from_dense(cls, weight: Tensor, mask: Tensor, block_size=(32, 32), *,
                   quantize: str | None = None) -> "BSRWeight":
        """Tile ``torch.where(mask, weight, 0)``, keeping every tile where ``mask`` keeps anything.

        ``quantize="int8"`` stores int8 tiles with per-output-channel scales.
        """
        where = f"{_NAME}.from_dense"
        C.check_weight(weight, where)
        C.check_mask(mask, weight, where)
        C.check_quantize(weight, quantize, where)
        weight, mask = weight.detach(), mask.detach()
        bh, bw = C.check_int_pair(tuple(block_size) if isinstance(block_size, list) else block_size,
                                  where, "block_size")
        rows, k = weight.shape
        tr, tc = -(-rows // bh), -(-k // bw)
        pruned = torch.where(mask, weight, torch.zeros((), dtype=weight.dtype, device=weight.device))
        scale = None
        if quantize == "int8":
            pruned, scale = quantize_int8_per_row(pruned)
        padded = torch.zeros((tr * bh, tc * bw), dtype=pruned.dtype, device=weight.device)
        padded[:rows, :k] = pruned
        kept = torch.zeros((tr * bh, tc * bw), dtype=torch.bool, device=weight.device)
        kept[:rows, :k] = mask
        tiles = padded.view(tr, bh, tc, bw).permute(0, 2, 1, 3)          # [R, T, bh, bw]
        tile_kept = kept.view(tr, bh, tc, bw).any(dim=3).any(dim=1)     # [R, T]
        values = tiles[tile_kept].contiguous()                           # row-major over (R, T)
        col = tile_kept.nonzero()[:, 1].to(torch.int32)
        crow = torch.zeros(tr + 1, dtype=torch.int64, device=weight.device)
        crow[1:] = torch.cumsum(tile_kept.sum(1), 0)
        return cls(values=values, col_indices=col, crow_indices=crow, shape=(rows, k), block_size=(bh, bw),
                   scale=scale)

    def _scatter(self) -> Tensor:
        (rows, k), (bh, bw) = self.shape, self.block_size
        tr, tc = self.tile_grid
        tiles = torch.zeros((tr, tc, bh, bw), dtype=self.values.dtype, device=self.values.device)
        tiles[self._tile_rows(), self.col_indices.to(torch.int64)] = self.values
        return tiles.permute(0, 2, 1, 3).reshape(tr * bh, tc * bw)[:rows, :k].contiguous()
