"""Argument checks shared by the C++ sparse-linear wrappers (``nm_linear_cpp``, ``bitmap_linear_cpp``).

Each raises ``TypeError`` / ``ValueError`` whose message starts with ``where`` (the wrapper) and names the
argument; the C++ entry points validate the raw pointers, sizes and strides again.
"""

from __future__ import annotations

import torch
from torch import Tensor


def check_cpu_weight(where: str, weight, cls) -> None:
    """``weight`` is a ``cls`` (a compressed format) on the CPU with float32 values, or int8 values with scales."""
    if not isinstance(weight, cls):
        raise TypeError(f"{where}: weight must be a{'n' if cls.__name__[0] in 'AEINO' else ''} {cls.__name__}, "
                        f"got {type(weight).__name__}")
    values = weight.values
    if not weight.quantized and values.dtype != torch.float32:
        raise ValueError(f"{where}: weight values must be float32 (or int8 with scales), got "
                         f"{values.dtype} (pack a float32 weight)")
    if values.device.type != "cpu":
        raise ValueError(f"{where}: weight must be on the CPU, got {values.device}")


def check_x_bias_variant(where: str, x, bias, variant, n_out: int, k: int):
    """fp32 CPU ``x [..., k]``, fp32 CPU ``bias [n_out]`` or None, ``variant`` a str; returns the bias detached
    and contiguous (or None)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{where}: x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype != torch.float32:
        raise ValueError(f"{where}: x must be float32, got {x.dtype}")
    if x.device.type != "cpu":
        raise ValueError(f"{where}: x must be on the CPU, got {x.device}")
    if x.dim() == 0 or x.shape[-1] != k:
        raise ValueError(f"{where}: x's last dimension must be in_features = {k}, got shape {tuple(x.shape)}")
    if bias is not None:
        if not isinstance(bias, Tensor):
            raise TypeError(f"{where}: bias must be a torch.Tensor or None, got {type(bias).__name__}")
        if bias.dtype != torch.float32 or bias.device.type != "cpu" or bias.shape != (n_out,):
            raise ValueError(f"{where}: bias must be a float32 CPU tensor of shape [out_features] = [{n_out}], "
                             f"got {bias.dtype} {tuple(bias.shape)} on {bias.device}")
        bias = bias.detach().contiguous()
    if not isinstance(variant, str):
        raise TypeError(f"{where}: variant must be a str, got {type(variant).__name__}")
    return bias


def row_major(t: Tensor) -> Tensor:
    """``t`` [R, C] itself when its rows are unit-stride and do not overlap, else a contiguous copy."""
    return t if t.shape[1] <= 1 or (t.stride(1) == 1 and t.stride(0) >= t.shape[1]) else t.contiguous()


def bound_rows_call(fn, w_views: tuple, N: int, extra: tuple, variant: str, keep: tuple):
    """``run(x2)`` for fp32 ``x2 [rows, K]``: ``y [rows, N]`` from the binding ``fn(x view, *w_views, y view,
    *extra, nthreads, variant)``, with the weight side's views (csrc/tensor_view.h) built once by the caller and
    x's and y's per call.  ``keep``: every tensor a weight view points at, held by the closure.  The x and y
    views are spelled out (every dtype is known): this is a decode step's hot path."""

    def run(x2: Tensor, keep=keep) -> Tensor:
        x2 = row_major(x2)
        rows = x2.shape[0]
        y = torch.empty((rows, N), dtype=torch.float32)
        fn((x2.data_ptr(), "float32", x2.shape, x2.stride()), *w_views, (y.data_ptr(), "float32", (rows, N), (N, 1)),
           *extra, torch.get_num_threads(), variant)
        return y

    return run
