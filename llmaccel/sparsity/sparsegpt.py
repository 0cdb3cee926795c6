"""``sparsegpt_prune``: N:M pruning that also corrects the weights it keeps (SparseGPT, Frantar & Alistarh 2023).

Magnitude and Wanda only choose which weights to drop; the output error of the layer is whatever the dropped
weights contributed.  SparseGPT reduces that error on calibration inputs ``X`` ([tokens, K], the layer's
inputs) by updating the kept weights, one column at a time, with the inverse Hessian of the layer's squared
error.  For one layer ``W [N, K]`` (every row independent, all rows at once)::

    H     = X^T X + lambda I                lambda = damp * mean(diag(X^T X))   (float64; dead inputs: H_kk = 1)
    U     = upper Cholesky factor of H^-1   (U^T U = H^-1)
    for each column j = 0 .. K-1, left to right (blocks of B columns; the updates to later blocks batched):
        at a group start (j % m == 0): in each row drop the m - n of the group's columns with the smallest
            W[:, c]**2 / U[c, c]**2            (the OBS saliency of column c given the columns still free)
        q      = W[:, j] with the dropped entries set to 0
        e      = (W[:, j] - q) / U[j, j]
        W[:, j] = q;   W[:, j+1:] -= e U[j, j+1:]        (the kept weights to the right absorb the error)

The mask is N:M along K like ``prune(..., "N:M")`` (a last partial group of L columns keeps
``ceil(n * L / m)``); the returned weight is zero where the mask is False.  Here ``X`` are the inputs of the
*dense* model (``calibrate(..., gram=True)`` collects ``X^T X`` for every Linear in one pass), not those of
the already pruned layers below, which the paper's sequential variant uses: one calibration pass instead of
one per layer.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._checks import parse_nm

__all__ = ["sparsegpt_prune"]

_WHERE = "llmaccel.sparsity.sparsegpt_prune"


def sparsegpt_prune(weight: Tensor, gram: Tensor, pattern: str = "2:4", *, block: int = 128,
                    damp: float = 0.01) -> tuple[Tensor, Tensor]:
    """``(pruned weight in weight's dtype, bool mask)`` for ``weight [N, K]`` and ``gram = X^T X [K, K]``
    (module docstring).  ``pattern`` is ``"N:M"``; ``block`` columns are updated together (a multiple of M)."""
    n, m = parse_nm(pattern, _WHERE)
    if not isinstance(weight, Tensor) or weight.dim() != 2 or not weight.is_floating_point():
        raise TypeError(f"{_WHERE}: weight must be a 2-D float tensor [N, K]")
    N, K = weight.shape
    if not isinstance(gram, Tensor) or tuple(gram.shape) != (K, K):
        raise ValueError(f"{_WHERE}: gram must be X^T X of shape [K, K] = [{K}, {K}], got "
                         f"{tuple(gram.shape) if isinstance(gram, Tensor) else type(gram).__name__}")
    if not bool(torch.isfinite(gram).all()):
        raise ValueError(f"{_WHERE}: gram holds NaN or inf")
    if not 0.0 < damp < 1.0:
        raise ValueError(f"{_WHERE}: damp must be in (0, 1), got {damp}")
    block = max(m, block // m * m)
    W = weight.detach().to(torch.float64).clone()
    H = gram.detach().to(device=W.device, dtype=torch.float64).clone()
    dead = torch.diagonal(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H.diagonal().add_(damp * float(torch.diagonal(H).mean()))
    U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    keep = torch.ones(N, K, dtype=torch.bool, device=W.device)
    for b0 in range(0, K, block):
        b1 = min(b0 + block, K)
        W1, U1 = W[:, b0:b1].clone(), U[b0:b1, b0:b1]
        err = torch.zeros_like(W1)
        for j in range(b1 - b0):
            c = b0 + j
            if c % m == 0:
                g1 = min(c + m, K) - b0
                cols = W1[:, j:g1] ** 2 / torch.diagonal(U1)[j:g1] ** 2
                width = g1 - j
                drop = width - -(-n * width // m)  # a partial last group keeps ceil(n * L / m)
                if drop > 0:
                    # the lowest saliencies go; ties to the higher column (prune() keeps the lower one)
                    order = torch.sort(cols, dim=1, stable=True, descending=True).indices
                    keep[:, c:c + width].scatter_(1, order[:, width - drop:], False)
            q = torch.where(keep[:, c], W1[:, j], torch.zeros_like(W1[:, j]))
            e = (W1[:, j] - q) / U1[j, j]
            W1[:, j] = q
            W1[:, j + 1:] -= e.unsqueeze(1) * U1[j, j + 1:].unsqueeze(0)
            err[:, j] = e
        W[:, b0:b1] = W1
        W[:, b1:] -= err @ U[b0:b1, b1:]
    W[~keep] = 0.0
    return W.to(weight.dtype), keep
