"""In-place version counters, and the tensors ``torch.inference_mode`` makes without them.

llmaccel caches work derived from a layer's tensors (a packed weight, a validated SmoothQuant factor, a
prepared call) and keys each entry by the tensor's identity *and* its version counter, which every in-place
write bumps (``copy_``, ``load_state_dict``), so a stale entry is never used.  A tensor created inside
``torch.inference_mode()`` is an *inference tensor*: it has no version counter (reading ``_version`` raises),
so nothing can prove it unchanged since the entry was made.  For such a tensor :func:`version` is None and
the caches recompute instead of trusting an entry (correct, slower); the modules avoid that cost by holding
normal tensors even when they are built under inference mode (:func:`own_normal_tensors_`).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

__all__ = ["version", "own_normal_tensors_"]


def version(t: Tensor) -> Optional[int]:
    """``t``'s version counter, or None for an inference tensor (which has none)."""
    return None if t.is_inference() else t._version


def own_normal_tensors_(module: nn.Module) -> nn.Module:
    """Replaces each of ``module``'s own parameters and buffers that is an inference tensor by a normal copy
    (made with inference mode switched off, so it has a version counter; a parameter keeps its
    ``requires_grad``).  Other tensors are left as they are.  Returns ``module``."""
    with torch.inference_mode(False):
        for name, p in list(module._parameters.items()):
            if p is not None and p.is_inference():
                module._parameters[name] = nn.Parameter(p.detach().clone(), requires_grad=p.requires_grad)
        for name, b in list(module._buffers.items()):
            if b is not None and b.is_inference():
                module._buffers[name] = b.clone()
    return module
