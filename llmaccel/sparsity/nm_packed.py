"""``NMPackedWeight``: an N:M-sparse weight as kept values plus per-group column indices.

A weight ``[N_out, K]`` is cut along K into ``G = ceil(K / M)`` groups of M
columns; the last group is padded with zero columns when M does not divide K.
Every group has exactly N *slots*::

    values   [N_out, G*N]   slot j of group g of row r: values[r, g*N + j]   (float, or int8 with scale)
    indices  uint8 [N_out, ceil(G*N*b / 8)]   each slot's column within its group, b bits, packed per row
    scale    fp32 [N_out] | None              int8 only: dequantized = values * scale[r]

    dense[r, g*M + index(r, g, j)] = values[r, g*N + j]       (then the padding columns are cut off)

Index packing (``_bits``): ``b`` is the smallest of 1, 2, 4, 8 bits that holds
M-1 (2:4 -> 2 bits, 4:8 and 2:16 -> 4 bits), so no index straddles a byte;
slot ``s = g*N + j`` sits in bits ``[s*b, s*b + b)`` of the row's bit stream,
least significant bit first.  For **2:4** that is one byte per two groups:
``byte = i0 | i1 << 2 | i2 << 4 | i3 << 6`` with ``i0, i1`` group 2t's two
indices and ``i2, i3`` group 2t+1's: a nibble per group, low nibble first.
A kernel can turn a nibble into the 4-bit expand mask ``1<<i0 | 1<<i1``
with a 16-entry table (``vpexpandd``), or use the indices to gather x.
2:4 metadata is 4 bits per group of 4, half a byte per kept value: 2:4 fp32
is (2*4 + 0.5) / 16 = 0.53 of the dense bytes, 2:4 int8 (2 + 0.5) / 4 = 0.63
of dense int8 (plus 4 bytes of scale per row).

Within a group the slots are sorted by column (strictly increasing indices).
A group whose mask keeps fewer than N columns fills its spare slots with
value 0, pointing first at padding columns (the tail group's, past K), then
at the lowest columns the mask dropped, so the slots are always N distinct
columns.  A slot pointing at a padding column must hold 0, or ``to_dense``
would drop a value: the state check rejects that.

``to_dense()`` returns ``torch.where(mask, weight, 0)`` bit for bit (float
values keep the weight's dtype; int8 returns the fp32 dequantized weight).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from . import _checks as C
from ._format import CompressedWeight
from ._bits import bits_for, pack_fields, packed_bytes, padding_bits_clear, unpack_fields
from .int8 import quantize_int8_per_row

__all__ = ["NMPackedWeight"]

_NAME = "NMPackedWeight"


@dataclass(frozen=True, eq=False)
class NMPackedWeight(CompressedWeight):
    """N:M packed weight (module docstring).  Build with :meth:`from_dense`."""

    NAME = _NAME
    TENSORS = ('values', 'indices')
    PAIRS = ('pattern', 'shape')

    values: Tensor
    indices: Tensor
    pattern: tuple[int, int]   # (N, M)
    shape: tuple[int, int]     # (N_out, K) of the dense weight
    scale: Tensor | None = None

    # ------------------------------------------------------------------ layout arithmetic

    @property
    def n(self) -> int:
        return self.pattern[0]

    @property
    def m(self) -> int:
        return self.pattern[1]

    @property
    def groups(self) -> int:
        return -(-self.shape[1] // self.m)

    @property
    def index_bits(self) -> int:
        return bits_for(self.m)

    def _slot_columns(self) -> Tensor:
        """int64 [N_out, G, N]: each slot's column in the padded weight [N_out, G*M]."""
        idx = unpack_fields(self.indices, self.index_bits, self.groups * self.n).view(-1, self.groups, self.n)
        base = torch.arange(self.groups, device=idx.device).view(1, -1, 1) * self.m
        return idx + base

    # ------------------------------------------------------------------ validation

    def __post_init__(self) -> None:
        where = _NAME
        n, m = C.check_int_pair(self.pattern, where, "pattern")
        object.__setattr__(self, "pattern", (n, m))
        if not n < m <= 256:
            raise ValueError(f"{where}: field 'pattern' must be N:M with N < M <= 256, got {n}:{m}")
        rows, k = C.check_int_pair(self.shape, where, "shape")
        object.__setattr__(self, "shape", (rows, k))
        slots = self.groups * n
        C.check_field(self.values, where, "values", shape=(rows, slots))
        C.check_values_and_scale(self.values, self.scale, rows, where)
        C.check_field(self.indices, where, "indices", dtype=torch.uint8,
                      shape=(rows, packed_bytes(slots, self.index_bits)))
        C.check_same_device(where, values=self.values, indices=self.indices)
        if not padding_bits_clear(self.indices, self.index_bits, slots):
            raise ValueError(f"{where}: field 'indices' has bits set past the last slot of a row")
        idx = unpack_fields(self.indices, self.index_bits, slots).view(rows, self.groups, n)
        if bool((idx >= m).any()):
            raise ValueError(f"{where}: field 'indices' holds a column >= M = {m} (the pattern is {n}:{m})")
        if n > 1 and not bool((idx[..., 1:] > idx[..., :-1]).all()):
            raise ValueError(f"{where}: field 'indices' must be strictly increasing within each group "
                             f"(distinct, sorted columns)")
        past_k = self._slot_columns() >= k
        if bool(past_k.any()) and bool((self.values.reshape(rows, self.groups, n)[past_k] != 0).any()):
            raise ValueError(f"{where}: field 'values' holds a non-zero in a slot that points past K = {k} "
                             f"(a padding column of the last group)")

    # ------------------------------------------------------------------ dense <-> packed

    @classmethod
    def from_dense(cls, weight: Tensor, mask: Tensor, pattern: str = "2:4", *,
                   quantize: str | None = None) -> "NMPackedWeight":
        """Pack ``torch.where(mask, weight, 0)``; ``mask`` keeps at most N of every group of M columns.

        ``quantize="int8"`` stores int8 values with per-output-channel scales (``llmaccel.sparsity.int8``).
        """
        where = f"{_NAME}.from_dense"
        C.check_weight(weight, where)
        C.check_mask(mask, weight, where)
        C.check_quantize(weight, quantize, where)
        weight, mask = weight.detach(), mask.detach()
        n, m = C.parse_nm(pattern, where)
        rows, k = weight.shape
        groups = -(-k // m)
        kept = torch.zeros((rows, groups * m), dtype=torch.bool, device=weight.device)
        kept[:, :k] = mask
        kept = kept.view(rows, groups, m)
        counts = kept.sum(-1)
        if bool((counts > n).any()):
            r, g = (int(v) for v in (counts > n).nonzero()[0])
            raise ValueError(f"{where}: mask keeps {int(counts[r, g])} of the columns {g * m}..{min(g * m + m, k) - 1} "
                             f"of row {r}; pattern {n}:{m} keeps at most {n} per group of {m}")
        pruned = torch.where(mask, weight, torch.zeros((), dtype=weight.dtype, device=weight.device))
        scale = None
        if quantize == "int8":
            pruned, scale = quantize_int8_per_row(pruned)
        # Slot choice: kept columns first, then padding columns, then dropped columns, each by column;
        # then the N chosen columns sorted by column.
        col = torch.arange(groups * m, device=weight.device).view(1, groups, m)
        rank = torch.where(kept, 0, torch.where(col >= k, 1, 2)) * m + col % m
        chosen = torch.sort(rank, dim=-1, stable=True).indices[..., :n]
        chosen = torch.sort(chosen, dim=-1).values
        padded = torch.zeros((rows, groups * m), dtype=pruned.dtype, device=weight.device)
        padded[:, :k] = pruned
        values = torch.gather(padded.view(rows, groups, m), -1, chosen).reshape(rows, groups * n)
        indices = pack_fields(chosen.reshape(rows, groups * n), bits_for(m))
        return cls(values=values.contiguous(), indices=indices, pattern=(n, m), shape=(rows, k), scale=scale)

    def _scatter(self) -> Tensor:
        """Dense [N_out, K] in the values' dtype: every slot's value at its column (padding cut off)."""
        rows, k = self.shape
        padded = torch.zeros((rows, self.groups * self.m), dtype=self.values.dtype, device=self.values.device)
        padded.scatter_(1, self._slot_columns().reshape(rows, -1), self.values)
        return padded[:, :k].contiguous()

    def mask(self) -> Tensor:
        """bool [N_out, K]: the columns that hold a slot (``prune``'s N:M mask exactly; for a mask that
        kept fewer than N in some full group, also the dropped columns that filled its spare slots)."""
        rows, k = self.shape
        padded = torch.zeros((rows, self.groups * self.m), dtype=torch.bool, device=self.values.device)
        padded.scatter_(1, self._slot_columns().reshape(rows, -1), True)
        return padded[:, :k].contiguous()
