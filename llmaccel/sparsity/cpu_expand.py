"""Dense expansion of N:M and bitmap weights in C++ (``llmaccel._C.sparse_*_expand``, csrc/sparse_expand.h).

::

    dense = nm_expand_raw(values, indices, scale, n, m, K)                 # fp32 [N_out, K]
    dense = bitmap_expand_raw(values, bitmap, row_offsets, scale, K)       # fp32 [N_out, K]

``dense`` equals the format's ``to_dense()`` bit for bit (int8 values: ``float(q) * scale[r]``).  The
``sparse_linear`` op takes this route where its sparse kernels would lose to the dense GEMM (large M): one
memory-bound pass (~4 bytes written per weight, ~10 ms for 4096 x 4096 on the dev VM) instead of the torch
reference's field checks and scatter (~0.4-0.9 s).  The fields are trusted as the kernels trust them (the
module checked them when it was built); the C++ side still never writes outside ``dense`` nor reads outside
``values`` (a bitmap row whose popcount disagrees with its offsets raises ``ValueError``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._ext import ext
from ..ops._cpp_views import view, view_or_none

__all__ = ["nm_expand_raw", "bitmap_expand_raw"]


def nm_expand_raw(values: Tensor, indices: Tensor, scale: Tensor | None, n: int, m: int, k: int) -> Tensor:
    values, indices = values.contiguous(), indices.contiguous()
    scale = scale.contiguous() if scale is not None else None
    out = torch.empty((values.shape[0], k), dtype=torch.float32)
    ext().sparse_nm_expand(view(values), view(indices), view_or_none(scale), view(out), n, m,
                           torch.get_num_threads())
    return out


def bitmap_expand_raw(values: Tensor, bitmap: Tensor, row_offsets: Tensor, scale: Tensor | None, k: int) -> Tensor:
    values, bitmap, row_offsets = values.contiguous(), bitmap.contiguous(), row_offsets.contiguous()
    scale = scale.contiguous() if scale is not None else None
    out = torch.empty((bitmap.shape[0], k), dtype=torch.float32)
    ext().sparse_bitmap_expand(view(bitmap), view(values), view(row_offsets), view_or_none(scale), view(out),
                               torch.get_num_threads())
    return out
