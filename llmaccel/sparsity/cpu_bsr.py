"""``bsr_linear_cpp``: the C++ block-sparse linear (``llmaccel._C.sparse_bsr_linear``) on a ``BSRWeight``.

::

    y = bsr_linear_cpp(x, bsr, bias)            # == x @ bsr.to_dense().T + bias, fp32
    y = bsr_linear_cpp(x, bsr, variant="generic")

Math, with the weight's kept tiles ``t`` of tile row ``i`` (``crow[i] <= t < crow[i+1]``), tile column
``c = col_indices[t]`` and block size ``(bh, bw)``::

    y[m, i*bh + o] = sum_t sum_{k < bw, c*bw + k < K} x[m, c*bw + k] * values[t, o, k]  (* scale[i*bh + o])
                     + bias[i*bh + o]

Empty tiles cost nothing: the kernel (csrc/sparse_bsr*.cpp) packs each tile row's kept tiles transposed and
runs a register-blocked dense fp32 micro-kernel on them (AVX2: 6 rows of x by 16 outputs), accumulating all
of the row's tiles before writing y once; a tile row with no tiles gives the bias.  fp32 tiles, or int8 tiles
(``quantize="int8"``: converted to float when packed, the per-row scale applied once per output).  Aimed at
prefill (M = 64 .. 4096); correct for any M.  Results are bit-identical for any thread count.

CPU tensors; x ``[..., K]`` fp32 with any leading dims and strides (rows whose elements are not contiguous
are copied); output fp32 ``[..., N_out]``.  ``variant`` is ``""`` (the best this CPU runs,
``llmaccel.cpu_info()["variants"]["sparse_bsr"]``) or ``"avx2"`` / ``"generic"``.  The C++ entry checks the
index data (``crow_indices`` from 0 to nnzb without decreasing, every ``col_indices`` in range): a corrupt
index raises ValueError, never a read out of bounds.  Inference only: no autograd.

x is read only at the columns of kept tiles, so an inf in x elsewhere leaves the outputs finite (unlike the
dense reference, where ``0 * inf`` is NaN).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .._ext import ext
from ..ops._cpp_views import view, view_or_none
from .bsr import BSRWeight
from ._cpu_args import check_cpu_weight, check_x_bias_variant, row_major

__all__ = ["bsr_linear_cpp", "bsr_linear_raw"]

_WHERE = "llmaccel.sparsity.bsr_linear_cpp"


def bsr_linear_cpp(x: Tensor, weight: BSRWeight, bias: Tensor | None = None, variant: str = "") -> Tensor:
    """``x @ weight.to_dense().T + bias`` with the C++ BSR kernel (module docstring)."""
    check_cpu_weight(_WHERE, weight, BSRWeight)
    n_out, k = weight.shape
    bias = check_x_bias_variant(_WHERE, x, bias, variant, n_out, k)
    y = bsr_linear_raw(x.detach().reshape(-1, k), weight.values, weight.col_indices, weight.crow_indices, weight.scale, bias,
                       weight.shape[0], variant)
    return y.view(*x.shape[:-1], weight.shape[0])


def bsr_linear_raw(x2: Tensor, values: Tensor, col_indices: Tensor, crow_indices: Tensor, scale: Tensor | None,
                   bias: Tensor | None, n_out: int, variant: str = "") -> Tensor:
    """The binding call: fp32 ``x2 [rows, K]`` (any strides), the tiles ``values [nnzb, bh, bw]`` (fp32, or int8
    with fp32 ``scale [n_out]``), int32 ``col_indices [nnzb]``, int64 ``crow_indices [ceil(n_out / bh) + 1]``,
    fp32 ``bias [n_out]`` or None; returns fp32 ``y [rows, n_out]``.  Shared by :func:`bsr_linear_cpp` and the
    ``sparse_linear`` op's cpp backend; the C++ entry validates sizes, strides and the index data."""
    x2 = row_major(x2)
    if values.stride(2) != 1 and values.shape[2] > 1:
        values = values.contiguous()
    col_indices, crow_indices = col_indices.contiguous(), crow_indices.contiguous()
    scale = scale.contiguous() if scale is not None else None
    y = torch.empty((x2.shape[0], n_out), dtype=torch.float32)
    ext().sparse_bsr_linear(view(x2), view(values), view(crow_indices), view(col_indices), view_or_none(scale),
                            view_or_none(bias), view(y), torch.get_num_threads(), variant)
    return y


# ---------------------------------------------------------------- the sparse_linear op's cpp backend, layout="bsr"

def op_refusal(a) -> Optional[str]:
    """Why the op's cpp backend cannot run this ``layout="bsr"`` call (None: it can)."""
    if a.scale is None and a.values.dtype != torch.float32:
        return f"the C++ BSR kernel takes float32 or int8 values, got {a.values.dtype}"
    if not hasattr(ext(), "sparse_bsr_linear"):
        return "this build of llmaccel._C has no sparse_bsr_linear (rebuild the extension)"
    return None


def op_run(a) -> Tensor:
    """The op's arguments (x fp32 / fp16 / bf16, widened in and rounded back; any float bias) through the kernel."""
    x, bias, n_out = a.x, a.bias, a.meta[0]
    if bias is not None and (bias.dtype != torch.float32 or not bias.is_contiguous()):
        bias = bias.to(torch.float32).contiguous()
    y = bsr_linear_raw(x.reshape(-1, x.shape[-1]).to(torch.float32), a.values, a.index, a.offsets, a.scale, bias,
                       n_out)
    return (y if x.dtype == torch.float32 else y.to(x.dtype)).reshape(*x.shape[:-1], n_out)
