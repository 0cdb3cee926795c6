"""``prune(weight, pattern, ...)``: which weights of an ``nn.Linear`` weight ``[N_out, K_in]`` to keep.

Scores (float64, so fp16 / bf16 / fp32 weights are ranked exactly)::

    magnitude:  S[n, k] = |W[n, k]|
    wanda:      S[n, k] = |W[n, k]| * a[k]      a = activation_norms: ||X[:, k]||_2 over calibration tokens

Wanda (Sun et al. 2023, arXiv 2306.11695) ranks a weight by how much it moves
the output on real inputs; with all ``a[k]`` equal it is magnitude pruning.

Patterns (the mask keeps the highest scores; always along K, the input dimension,
which is the reduction dimension a kernel walks):

* ``"N:M"`` (``"2:4"``, ``"1:4"``, ``"4:8"`` ...): each row is cut into groups of M
  consecutive columns and each group keeps its N highest scores.  When K is
  not a multiple of M, the last group has ``L = K mod M`` columns and keeps
  ``ceil(N * L / M)`` of them (its density stays as close to N/M as L allows;
  the N:M format stores it as a group padded with zero columns).
  ``sparsity`` must be None (the pattern fixes it).
* ``"unstructured"``: exactly ``round(sparsity * N_out * K)`` weights are pruned
  (``round`` = half up), spread over the rows as evenly as possible: every row
  prunes ``floor`` or ``ceil`` of ``sparsity * K``, and the first rows take the
  extra ones.  Ranking within each row, not across the whole matrix, is
  Wanda's "per output" comparison group (much better than per layer on
  LLMs), and it gives every output channel the same work in a sparse kernel.
* ``"block"``: the weight is tiled by ``block_size = (rows, cols)`` from the top-left;
  tiles at the right and bottom edges may be smaller.  A tile's score is its
  mean squared score (its squared L2 norm over its element count, so a small
  edge tile competes per element, not by size), and ``round(sparsity * tiles)``
  whole tiles with the lowest scores are pruned.  ``sparsity`` counts tiles:
  the element sparsity equals it when ``block_size`` divides the shape.

Ties are broken by position, deterministically: among equal scores the lower
column index (for blocks: the earlier tile in row-major tile order) is kept.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._checks import check_int_pair, check_weight, parse_nm

__all__ = ["prune", "METHODS"]

METHODS = ("magnitude", "wanda")
_WHERE = "llmaccel.sparsity.prune"


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def _scores(weight: Tensor, method: str, activation_norms) -> Tensor:
    if method == "sparsegpt":
        raise ValueError(f"{_WHERE}: method='sparsegpt' also updates the weights it keeps, so it is not a mask: use "
                         f"llmaccel.sparsity.sparsegpt_prune, SparseLinear.from_linear or sparsify_")
    if method not in METHODS:
        raise ValueError(f"{_WHERE}: method must be one of {METHODS}, got {method!r}")
    score = weight.detach().to(torch.float64).abs()
    if method == "magnitude":
        if activation_norms is not None:
            raise ValueError(f"{_WHERE}: activation_norms is only used by method='wanda'; "
                             f"pass method='wanda' or drop activation_norms")
        return score
    if activation_norms is None:
        raise ValueError(f"{_WHERE}: method='wanda' needs activation_norms (from llmaccel.sparsity.calibrate)")
    a = activation_norms
    if not isinstance(a, Tensor):
        raise TypeError(f"{_WHERE}: activation_norms must be a torch.Tensor, got {type(a).__name__}")
    k = weight.shape[1]
    if a.dim() != 1 or a.shape[0] != k or not a.is_floating_point():
        raise ValueError(f"{_WHERE}: activation_norms must be a float tensor of shape [in_features] = [{k}], "
                         f"got {a.dtype} {tuple(a.shape)}")
    a = a.detach().to(device=weight.device, dtype=torch.float64)
    if not bool((torch.isfinite(a) & (a >= 0)).all()):
        raise ValueError(f"{_WHERE}: activation_norms must be finite and >= 0")
    return score * a


def _keep_top(score: Tensor, keep: Tensor) -> Tensor:
    """Along the last dim keep the ``keep`` highest scores (``keep`` broadcasts over the leading dims).

    A stable descending sort lists equal scores in position order, so the lower index wins a tie.
    """
    order = torch.sort(score, dim=-1, descending=True, stable=True).indices
    positions = torch.arange(score.shape[-1], device=score.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(-1, order, positions)
    return rank < keep


def _nm_mask(score: Tensor, n: int, m: int) -> Tensor:
    rows, k = score.shape
    groups = -(-k // m)
    padded = torch.full((rows, groups * m), float("-inf"), dtype=score.dtype, device=score.device)
    padded[:, :k] = score  # -inf padding sorts after every real score (>= 0), so it is never kept
    keep = torch.full((groups,), n, dtype=torch.int64, device=score.device)
    tail = k - (groups - 1) * m
    keep[-1] = -(-n * tail // m)
    mask = _keep_top(padded.view(rows, groups, m), keep.view(1, groups, 1))
    return mask.reshape(rows, groups * m)[:, :k].contiguous()


def _unstructured_mask(score: Tensor, sparsity: float) -> Tensor:
    rows, k = score.shape
    total = _round_half_up(sparsity * rows * k)
    base, extra = divmod(total, rows)
    pruned = torch.full((rows, 1), base, dtype=torch.int64, device=score.device)
    pruned[:extra] += 1
    return _keep_top(score, k - pruned)


def _block_mask(score: Tensor, sparsity: float, block_size: tuple[int, int]) -> Tensor:
    rows, k = score.shape
    bh, bw = block_size
    tr, tc = -(-rows // bh), -(-k // bw)
    sq = torch.zeros((tr * bh, tc * bw), dtype=torch.float64, device=score.device)
    sq[:rows, :k] = score * score
    ones = torch.zeros_like(sq)
    ones[:rows, :k] = 1.0
    tile_sum = sq.view(tr, bh, tc, bw).sum(dim=(1, 3))
    tile_count = ones.view(tr, bh, tc, bw).sum(dim=(1, 3))
    tile_score = (tile_sum / tile_count).reshape(-1)
    n_tiles = tr * tc
    keep_tiles = _keep_top(tile_score, torch.tensor(n_tiles - _round_half_up(sparsity * n_tiles),
                                                    device=score.device))
    full = keep_tiles.view(tr, 1, tc, 1).expand(tr, bh, tc, bw).reshape(tr * bh, tc * bw)
    return full[:rows, :k].contiguous()


def _check_sparsity(sparsity, pattern: str) -> float:
    if sparsity is None:
        raise ValueError(f"{_WHERE}: pattern={pattern!r} needs sparsity, a float in (0, 1)")
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0.0 < float(sparsity) < 1.0:
        raise ValueError(f"{_WHERE}: sparsity must be a float in (0, 1), got {sparsity!r}")
    return float(sparsity)


def prune(weight: Tensor, pattern: str, *, sparsity: float | None = None, block_size=(32, 32),
          method: str = "magnitude", activation_norms: Tensor | None = None) -> Tensor:
    """The keep-mask (bool, ``weight``'s shape and device) of ``weight [N_out, K_in]`` (module docstring).

    pattern: ``"N:M"`` (e.g. ``"2:4"``), ``"unstructured"`` or ``"block"``.
    sparsity: fraction pruned, in (0, 1); required by ``"unstructured"`` and ``"block"``, refused by N:M.
    block_size: ``(rows, cols)`` tile of ``"block"``.
    method: ``"magnitude"`` (|w|) or ``"wanda"`` (|w| * activation_norms[k]).
    activation_norms: float ``[K_in]``, >= 0, for ``"wanda"`` (``llmaccel.sparsity.calibrate`` gives them).

    The pruned weight is ``torch.where(mask, weight, 0)``.  ``weight`` may be any
    view (strided, transposed); it is not modified.
    """
    check_weight(weight, _WHERE)
    score = _scores(weight, method, activation_norms)
    if pattern == "unstructured":
        return _unstructured_mask(score, _check_sparsity(sparsity, pattern))
    if pattern == "block":
        bs = check_int_pair(tuple(block_size) if isinstance(block_size, list) else block_size, _WHERE, "block_size")
        return _block_mask(score, _check_sparsity(sparsity, pattern), bs)
    n, m = parse_nm(pattern, _WHERE)
    if sparsity is not None:
        raise ValueError(f"{_WHERE}: pattern {pattern!r} fixes the sparsity ({1 - n / m:g}); pass sparsity=None")
    return _nm_mask(score, n, m)
