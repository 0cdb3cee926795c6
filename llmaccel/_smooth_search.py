"""Choosing SmoothQuant's migration strength for ``optimize(quantize="int8", calibration=...)`` by measurement.

SmoothQuant's ``alpha`` trades activation range against weight range (:mod:`llmaccel.smoothquant`): 0.5
suits BERT-class encoders, LLMs with strong outlier channels often want 0.75-0.85, and for some models no
smoothing is best.  No single value is right for every model, and the calibration batches are at hand, so
``optimize`` measures instead of guessing: each candidate (``None`` = no smoothing, then the alphas) is
applied to a copy of the float model exactly as ``optimize`` would apply it (the same ``apply`` callable:
smooth_ then quantize_), the copy runs the calibration batches, and the candidate with the smallest
relative L2 error of the outputs against the float model wins (ties: the earlier candidate).

Measured on all-MiniLM-L6-v2 (one calibration batch of 16 sentences; held-out eval set of 32 sentences,
embedding cosine to fp32, mean / worst): none 0.99682 / 0.98292, 0.3 0.99784 / 0.98858, 0.5 0.99875 /
0.99067, 0.7 0.99790 / 0.98031, 0.9 0.99387 / 0.93038; the calibration error ranks them the same way
(0.5 best), so the search picks 0.5 there.

Each candidate costs one deep copy of the model and two passes over the calibration batches, so the
search runs only for models below :data:`MAX_SEARCH_BYTES` of parameters and buffers; above it ``optimize``
uses alpha 0.5 and its report says the search was skipped and why.
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Optional, Sequence

from torch import nn

CANDIDATES: tuple = (None, 0.3, 0.5, 0.7, 0.85)
DEFAULT_ALPHA = 0.5
MAX_SEARCH_BYTES = 1 << 30  # a copy per candidate: keep it to models that fit beside themselves many times


def choose_alpha(model: nn.Module, apply: Callable[[nn.Module, Optional[float]], Any],
                 error_of: Callable[[nn.Module], dict], model_bytes: int,
                 candidates: Sequence[Optional[float]] = CANDIDATES) -> tuple[Optional[float], dict, str]:
    """``(alpha, {candidate: error dict}, note)``: the candidate whose ``apply``-ed copy has the smallest
    ``error_of(copy)["relative_l2"]``.  ``model`` itself is not changed."""
    if model_bytes > MAX_SEARCH_BYTES:
        return DEFAULT_ALPHA, {}, (f"alpha {DEFAULT_ALPHA} (no search: the model has {model_bytes / 2**30:.1f} GiB "
                                   f"of weights, above the {MAX_SEARCH_BYTES / 2**30:.0f} GiB a copy per "
                                   f"candidate may take)")
    errors = {}
    for alpha in candidates:
        trial = copy.deepcopy(model)
        apply(trial, alpha)
        errors[alpha] = error_of(trial)
        del trial
    best = min(candidates, key=lambda a: (errors[a]["relative_l2"], candidates.index(a)))
    tried = ", ".join(f"{'none' if a is None else a}: {errors[a]['relative_l2']:.4g}" for a in candidates)
    chosen = "no SmoothQuant" if best is None else f"SmoothQuant alpha {best}"
    return best, errors, f"{chosen}, the smallest calibration error of the candidates (relative L2: {tried})"
