"""Packing small unsigned fields (1, 2, 4 or 8 bits) into bytes, least significant bits first.

Layout, per row of ``fields [R, S]`` with ``b`` bits each: field ``s`` lies in
bits ``[s*b, s*b + b)`` of the row's bit stream, and byte ``i`` of the row
holds stream bits ``8i .. 8i+7`` with stream bit ``8i`` as its bit 0 (its
least significant bit).  So with ``b = 2`` byte ``i`` holds fields
``4i, 4i+1, 4i+2, 4i+3`` in bits ``1:0, 3:2, 5:4, 7:6``; with ``b = 1``
bit ``j`` of byte ``i`` is field ``8i + j``.  Read as little-endian words
the fields keep their order, which is what a SIMD mask (``__mmask16`` ...)
wants.  Each row is padded to whole bytes; the padding bits are zero.

Because ``b`` divides 8, no field straddles a byte boundary: decoding is one
shift and one AND.
"""

from __future__ import annotations

import torch
from torch import Tensor

FIELD_BITS = (1, 2, 4, 8)


def bits_for(m: int) -> int:
    """The smallest field width of 1, 2, 4, 8 bits that holds 0 .. m-1."""
    for b in FIELD_BITS:
        if m <= 1 << b:
            return b
    raise ValueError(f"bits_for: {m} values do not fit 8 bits")


def packed_bytes(num_fields: int, b: int) -> int:
    return (num_fields * b + 7) // 8


def pack_fields(fields: Tensor, b: int) -> Tensor:
    """``fields [R, S]`` (integers in ``[0, 2**b)``) -> ``uint8 [R, packed_bytes(S, b)]`` (module layout)."""
    rows, s = fields.shape
    per = 8 // b
    nbytes = packed_bytes(s, b)
    padded = torch.zeros((rows, nbytes * per), dtype=torch.int32, device=fields.device)
    padded[:, :s] = fields.to(torch.int32)
    shifts = torch.arange(per, dtype=torch.int32, device=fields.device) * b
    return (padded.view(rows, nbytes, per) << shifts).sum(-1, dtype=torch.int32).to(torch.uint8)


def unpack_fields(packed: Tensor, b: int, num_fields: int) -> Tensor:
    """Inverse of :func:`pack_fields`: ``uint8 [R, B]`` -> ``int64 [R, num_fields]``."""
    per = 8 // b
    shifts = torch.arange(per, dtype=torch.int32, device=packed.device) * b
    fields = (packed.to(torch.int32).unsqueeze(-1) >> shifts) & ((1 << b) - 1)
    return fields.reshape(packed.shape[0], -1)[:, :num_fields].to(torch.int64)


def padding_bits_clear(packed: Tensor, b: int, num_fields: int) -> bool:
    """True when every bit past the last field of each row is zero (a corrupt state may set them)."""
    used = num_fields * b
    spare = packed.shape[1] * 8 - used
    if spare == 0:
        return True
    last = packed[:, -1].to(torch.int32)
    keep = (1 << (8 - spare)) - 1  # low bits of the last byte that hold fields
    return bool(((last & ~keep & 0xFF) == 0).all())
