"""``nm_large_linear_raw``: the large-M C++ N:M kernel (``llmaccel._C.sparse_nm_large_linear``, csrc/sparse_nm_large*).

Same math, arguments and result as :func:`llmaccel.sparsity.cpu_kernel.nm_linear_raw`::

    y[i, o] = sum_k x[i, k] * W[o, k] (* scale[o] for int8 values) + bias[o]      (fp32)

with ``W`` the n:m-sparse weight of ``values`` / ``indices`` (``NMPackedWeight``'s layout).  The kernel packs
x into transposed panels of 48 rows, decodes each weight row once per call into (value, panel offset) pairs
and runs n/m of a dense GEMM's FMAs on them: slower than the small-M kernel for a few rows (it pays the
packing and the decode), faster from a few dozen rows on (``ops/sparse_linear_routes.py``).
Results are bit-identical for any thread count.  Padding slots (past K) are never read from x.
"""

from __future__ import annotations

from torch import Tensor

from .cpu_kernel import nm_linear_raw

__all__ = ["nm_large_linear_raw"]


def nm_large_linear_raw(x2: Tensor, values: Tensor, indices: Tensor, scale: Tensor | None, bias: Tensor | None,
                        n: int, m: int, variant: str = "") -> Tensor:
    """The binding call on already checked fields, as ``nm_linear_raw``: fp32 ``x2 [rows, K]`` (any strides),
    the N:M ``values [N, G*n]`` (fp32, or int8 with fp32 ``scale [N]``) and packed ``indices``, fp32
    ``bias [N]`` or None; returns fp32 ``y [rows, N]``.  The C++ entry validates what it is handed."""
    return nm_linear_raw(x2, values, indices, scale, bias, n, m, variant, binding="sparse_nm_large_linear")
