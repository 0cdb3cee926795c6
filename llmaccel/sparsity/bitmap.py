"""``BitmapWeight``: an unstructured-sparse weight as a 1-bit-per-weight bitmap plus packed kept values.

::

    bitmap       uint8 [N_out, ceil(K / 8)]   bit j of byte i of row r = mask[r, 8*i + j]   (LSB first)
    values       [nnz]                        row 0's kept values by column, then row 1's, ...  (float, or int8)
    row_offsets  int64 [N_out + 1]            row r's values are values[row_offsets[r] : row_offsets[r+1]]
    scale        fp32 [N_out] | None          int8 only: dequantized = values * scale[r]

Each row's bitmap is padded to whole bytes with zero bits.  Read as
little-endian words, bit ``t`` of a 16-bit word is column ``16w + t``: the
``__mmask16`` that ``vpexpandd`` / ``_mm512_maskz_expandloadu_ps`` takes to
spread the next ``popcount`` packed values over 16 lanes.  The values are
stored for every kept column, zero or not: the bitmap is the mask.

Bytes per weight at sparsity s with v-byte values: bitmap ``(1 - s) * v + 1/8``;
dense ``v``; CSR with int32 column indices ``(1 - s) * (v + 4)``.  So the bitmap
beats dense above s = 1 / (8v) (3 % fp32, 12.5 % int8) and CSR below s = 97 %.

``to_dense()`` returns ``torch.where(mask, weight, 0)`` bit for bit (int8:
the fp32 dequantized weight).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from . import _checks as C
from ._format import CompressedWeight
from ._bits import pack_fields, packed_bytes, padding_bits_clear, unpack_fields
from .int8 import quantize_int8_per_row

__all__ = ["BitmapWeight"]

_NAME = "BitmapWeight"
_POPCOUNT = torch.tensor([bin(b).count("1") for b in range(256)], dtype=torch.int64)  # set bits of each byte value


@dataclass(frozen=True, eq=False)
class BitmapWeight(CompressedWeight):
    """Bitmap + packed values (module docstring).  Build with :meth:`from_dense`."""

    NAME = _NAME
    TENSORS = ('bitmap', 'values', 'row_offsets')
    PAIRS = ('shape',)

    bitmap: Tensor
    values: Tensor
    row_offsets: Tensor
    shape: tuple[int, int]
    scale: Tensor | None = None

    def __post_init__(self) -> None:
        where = _NAME
        rows, k = C.check_int_pair(self.shape, where, "shape")
        object.__setattr__(self, "shape", (rows, k))  # plain ints, whatever sequence was passed
        C.check_field(self.bitmap, where, "bitmap", dtype=torch.uint8, shape=(rows, packed_bytes(k, 1)))
        C.check_field(self.values, where, "values", dim=1)
        C.check_values_and_scale(self.values, self.scale, rows, where)
        C.check_field(self.row_offsets, where, "row_offsets", dtype=torch.int64, shape=(rows + 1,))
        C.check_same_device(where, bitmap=self.bitmap, values=self.values, row_offsets=self.row_offsets)
        if not padding_bits_clear(self.bitmap, 1, k):
            raise ValueError(f"{where}: field 'bitmap' has bits set past column K = {k}")
        counts = _POPCOUNT.to(self.bitmap.device)[self.bitmap.long()].sum(1)  # pad bits are clear (checked)
        offsets = self.row_offsets
        if int(offsets[0]) != 0 or not torch.equal(offsets[1:] - offsets[:-1], counts):
            raise ValueError(f"{where}: field 'row_offsets' must start at 0 and step by each row's popcount "
                             f"of 'bitmap'")
        if int(offsets[-1]) != self.values.numel():
            raise ValueError(f"{where}: field 'values' has {self.values.numel()} entries, the bitmap "
                             f"keeps {int(offsets[-1])}")

    @classmethod
    def from_dense(cls, weight: Tensor, mask: Tensor, *, quantize: str | None = None) -> "BitmapWeight":
        """Pack ``torch.where(mask, weight, 0)`` for any mask; ``quantize="int8"`` stores int8 + scales."""
        where = f"{_NAME}.from_dense"
        C.check_weight(weight, where)
        C.check_mask(mask, weight, where)
        C.check_quantize(weight, quantize, where)
        weight, mask = weight.detach(), mask.detach()
        pruned = torch.where(mask, weight, torch.zeros((), dtype=weight.dtype, device=weight.device))
        scale = None
        if quantize == "int8":
            pruned, scale = quantize_int8_per_row(pruned)
        mask = mask.contiguous()
        values = pruned[mask]  # boolean indexing walks row-major: row by row, columns ascending
        counts = mask.sum(1)
        offsets = torch.zeros(weight.shape[0] + 1, dtype=torch.int64, device=weight.device)
        offsets[1:] = torch.cumsum(counts, 0)
        return cls(bitmap=pack_fields(mask, 1), values=values, row_offsets=offsets,
                   shape=(weight.shape[0], weight.shape[1]), scale=scale)

    def mask(self) -> Tensor:
        """bool [N_out, K]: the kept weights."""
        return unpack_fields(self.bitmap, 1, self.shape[1]).bool()

    def _scatter(self) -> Tensor:
        dense = torch.zeros(self.shape, dtype=self.values.dtype, device=self.values.device)
        dense[self.mask()] = self.values
        return dense
