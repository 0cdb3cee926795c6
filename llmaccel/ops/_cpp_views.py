"""Tensors as the C++ bindings that take views receive them (csrc/tensor_view.h).

``view(t) = (t.data_ptr(), dtype name, t.shape, t.stride())``, strides in elements.  The binding checks
each view once (rank, dtype, sizes that must agree with the call's other tensors) before any kernel reads
it; the caller keeps ``t`` alive for the call.  Every tensor argument of ``llmaccel._C`` is a view (attention,
int8, sparse); only raw buffers (``stream_read``, ``advise_huge_pages``, ``attention_exp2``) take addresses.
A decode closure builds its weight side's views once (they hold addresses: the closure keeps the tensors
alive) and only x's and y's per call, spelled out inline there since their dtypes are known.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

__all__ = ["view", "view_or_none"]

_NAMES = {torch.float32: "float32", torch.bool: "bool", torch.uint8: "uint8", torch.int8: "int8",
          torch.int32: "int32", torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float64: "float64"}


def view(t: Tensor) -> tuple:
    dt = t.dtype
    return t.data_ptr(), _NAMES.get(dt) or str(dt).removeprefix("torch."), t.shape, t.stride()


def view_or_none(t: Optional[Tensor]) -> Optional[tuple]:
    return None if t is None else view(t)
