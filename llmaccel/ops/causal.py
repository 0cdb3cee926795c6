"""The causal-mask rule, in one place: which keys each query may see.

The op's reference, the nn modules and the transformers integration all build their causal masks from it.
"""

from __future__ import annotations

import torch
from torch import Tensor


def causal_allowed(q_start: int, q_end: int, Lk: int, offset: int = 0, device=None) -> Tensor:
    """bool [q_end - q_start, Lk]: True where query i may attend key j, i.e. ``j <= i + offset``.

    ``offset = 0`` is SDPA's top-left alignment; ``offset = Lk - Lq`` aligns the mask to the end of the keys
    (bottom-right: query i of a KV-cache step sees every cached key up to its own position).
    """
    i = torch.arange(q_start, q_end, device=device).unsqueeze(1)
    j = torch.arange(Lk, device=device).unsqueeze(0)
    return j <= i + offset
