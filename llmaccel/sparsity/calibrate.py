"""``calibrate(model, batches)``: per-input-channel L2 norms of every ``nn.Linear``'s input (Wanda's ``a``).

For a Linear with ``in_features = K`` that sees inputs ``x_1, x_2, ...``
(each flattened to ``[tokens, K]``) over all calibration batches::

    a[k] = sqrt( sum over every token t of every batch of x_t[k]**2 )

The sum of squares is accumulated in float64 (each square of an fp32 / fp16 /
bf16 value is exact there), so the batch order changes the result only in
float64's last bits.  A Linear called several times per batch (shared
weights) accumulates every call.

With ``gram=True`` it returns each Linear's ``X^T X`` instead (float64
``[K, K]``, summed over the same tokens): the Hessian of the layer's squared
output error that SparseGPT (``sparsegpt_prune``) corrects the kept weights
with.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["calibrate"]

_WHERE = "llmaccel.sparsity.calibrate"


def calibrate(model: nn.Module, batches: Iterable, *,
              forward_fn: Callable[[nn.Module, Any], Any] | None = None, gram: bool = False) -> dict[str, Tensor]:
    """Run ``batches`` through ``model``; return ``{linear fqn: a float64 [in_features]}``, or with ``gram``
    ``{linear fqn: X^T X float64 [in_features, in_features]}`` (module docstring).

    Each batch runs as ``model(batch)``, or ``forward_fn(model, batch)`` when given
    (tuples, dicts, HF kwargs: ``forward_fn=lambda m, b: m(**b)``), under
    ``torch.no_grad()`` in ``eval()`` mode; the modules' training flags are
    restored and the hooks removed afterwards, also when a batch raises.
    Linears that no batch reached are left out of the result.  The norms live
    on the device of the Linear's inputs.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"{_WHERE}: model must be an nn.Module, got {type(model).__name__}")
    run = forward_fn if forward_fn is not None else (lambda m, b: m(b))
    linears = {fqn: m for fqn, m in model.named_modules() if isinstance(m, nn.Linear)}
    if not linears:
        raise ValueError(f"{_WHERE}: model has no nn.Linear to calibrate")
    sumsq: dict[str, Tensor] = {}

    def hook_for(fqn: str, linear: nn.Linear):
        def hook(module, args, kwargs):
            x = args[0] if args else kwargs.get("input")
            if not isinstance(x, Tensor) or x.numel() == 0:
                return
            if x.shape[-1] != linear.in_features:
                return  # the Linear itself raises on this input
            x2 = x.detach().reshape(-1, x.shape[-1]).to(torch.float64)
            s = x2.t() @ x2 if gram else x2.square().sum(0)
            prev = sumsq.get(fqn)
            sumsq[fqn] = s if prev is None else prev + s
        return hook

    handles = [m.register_forward_pre_hook(hook_for(fqn, m), with_kwargs=True) for fqn, m in linears.items()]
    training = {m: m.training for m in model.modules()}
    num_batches = 0
    model.eval()
    try:
        with torch.no_grad():
            for batch in batches:
                run(model, batch)
                num_batches += 1
    finally:
        for h in handles:
            h.remove()
        for m, flag in training.items():
            m.training = flag
    if num_batches == 0:
        raise ValueError(f"{_WHERE}: batches yielded no batches")
    norms = {}
    for fqn, s in sumsq.items():
        if not bool(torch.isfinite(s).all()):
            raise ValueError(f"{_WHERE}: the input of {fqn!r} holds NaN or inf (or overflows float64)")
        norms[fqn] = s if gram else s.sqrt()
    return norms
