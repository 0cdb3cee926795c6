"""Finding a model's nn.Linear layers and replacing them: the walk quantize_ and sparsify_ share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn


def is_conv1d(module: nn.Module) -> bool:
    """transformers' ``Conv1D`` (the GPT-2 family's projections): ``y = x @ W + b`` with ``W`` [in, out],
    i.e. an ``nn.Linear`` whose weight is stored transposed.  Matched by class (no transformers import)."""
    t = type(module)
    return t.__name__ == "Conv1D" and t.__module__.startswith("transformers") and hasattr(module, "nf") \
        and isinstance(getattr(module, "weight", None), torch.Tensor) and module.weight.dim() == 2


def conv1d_to_linear_(model: nn.Module) -> list[str]:
    """Replace every transformers ``Conv1D`` in ``model`` by the ``nn.Linear`` computing the same function,
    in every slot that holds it; returns their (first) names.

    ``Conv1D(nf, nx)``: ``weight`` [nx, nf], ``y = addmm(bias, x, weight)``; the Linear gets
    ``weight.T`` [nf, nx] (copied once, contiguous) and the same bias, dtype, device and ``requires_grad``.
    The float function is unchanged up to the summation order of the matmul.  quantize_, sparsify_ and
    smooth_ call this first, so GPT-2-style models are quantized like any other.
    """
    names = {id(m): fqn for fqn, m in reversed(list(model.named_modules()))}  # first name wins
    done: dict[int, nn.Linear] = {}
    for _, parent in list(model.named_modules(remove_duplicate=False)):
        for attr, child in list(parent._modules.items()):
            if child is None or not is_conv1d(child):
                continue
            lin = done.get(id(child))
            if lin is None:
                w = child.weight
                nx, nf = w.shape
                lin = nn.Linear(nx, nf, bias=child.bias is not None, device=w.device, dtype=w.dtype)
                with torch.no_grad():
                    lin.weight.copy_(w.t())
                    if child.bias is not None:
                        lin.bias.copy_(child.bias)
                lin.weight.requires_grad_(w.requires_grad)
                if child.bias is not None:
                    lin.bias.requires_grad_(child.bias.requires_grad)
                lin.train(child.training)
                done[id(child)] = lin
            setattr(parent, attr, lin)
    return [names[i] for i in done]


def sequential_head(model: nn.Module) -> Optional[nn.Linear]:
    """The last module with parameters of an ``nn.Sequential`` model (descending into trailing nested
    Sequentials), if it is an ``nn.Linear``: its output is the model's output."""
    while isinstance(model, nn.Sequential):
        last = next((m for m in reversed(list(model)) if any(True for _ in m.parameters())), None)
        if last is None:
            return None
        model = last
    return model if isinstance(model, nn.Linear) else None


@dataclass
class LinearSites:
    """Where a model's ``nn.Linear`` layers are, and what the skip rules need to know about them."""

    linears: dict[str, nn.Linear]                      # first name of each Linear instance -> it
    embeddings: dict[int, str]                         # id(embedding weight) -> its module (tied output heads)
    mha_out_proj: set[int]                             # id of every nn.MultiheadAttention's out_proj
    seq_head: Optional[nn.Linear]                      # the output Linear of an nn.Sequential model
    slots: dict[int, list[tuple[nn.Module, str]]]      # id(Linear) -> every (parent, attribute) holding it


def linear_sites(model: nn.Module) -> LinearSites:
    named = dict(model.named_modules())  # first name of each module instance
    slots: dict[int, list[tuple[nn.Module, str]]] = {}
    # Every (parent, attribute) that holds each Linear, so shared layers are replaced everywhere.
    for _, parent in model.named_modules(remove_duplicate=False):
        for attr, child in parent._modules.items():
            if isinstance(child, nn.Linear):
                slots.setdefault(id(child), []).append((parent, attr))
    return LinearSites(
        linears={fqn: m for fqn, m in named.items() if isinstance(m, nn.Linear)},
        embeddings={id(m.weight): fqn for fqn, m in named.items() if isinstance(m, nn.Embedding)},
        mha_out_proj={id(m.out_proj) for m in named.values()
                      if isinstance(m, nn.MultiheadAttention) and isinstance(getattr(m, "out_proj", None), nn.Linear)},
        seq_head=sequential_head(model),
        slots=slots,
    )


def replace_linears(sites: LinearSites, filter_fn: Optional[Callable[[nn.Module, str], bool]],
                    reason_of: Callable[[str, nn.Linear], Optional[str]],
                    build: Callable[[str, nn.Linear], nn.Module]):
    """Replace each Linear (model order) by ``build(fqn, linear)`` in every slot that holds it, unless
    ``filter_fn(linear, fqn)`` is False or ``reason_of(fqn, linear)`` names a reason to keep it.

    Returns ``(replaced, skipped)``: ``[(fqn, old, new)]`` and ``{fqn: reason}``.
    """
    replaced, skipped = [], {}
    for fqn, mod in sites.linears.items():
        if filter_fn is not None and not filter_fn(mod, fqn):
            skipped[fqn] = "filter_fn returned False"
            continue
        reason = reason_of(fqn, mod)
        if reason is not None:
            skipped[fqn] = reason
            continue
        new = build(fqn, mod)
        for parent, attr in sites.slots[id(mod)]:
            setattr(parent, attr, new)
        replaced.append((fqn, mod, new))
    return replaced, skipped


def summary_tail(skipped: dict[str, str], fastpath: list[str], bytes_before: int, bytes_after: int) -> list[str]:
    """The closing lines of a swap summary: skipped layers with their reasons, the fast paths turned off
    (``_swap.after_swap``), and the model's bytes before and after."""
    lines = []
    if skipped:
        lines.append("skipped:")
        w = max(len(k) for k in skipped)
        lines.extend(f"  {fqn:<{w}}  {why}" for fqn, why in skipped.items())
    if fastpath:
        lines.append("kept correct under no_grad / inference_mode:")
        lines.extend(f"  {line}" for line in fastpath)
    saved = bytes_before - bytes_after
    pct = 100.0 * saved / bytes_before if bytes_before else 0.0
    lines.append(f"model bytes: {bytes_before:,} -> {bytes_after:,} (saved {saved:,}, {pct:.1f}%)")
    return lines
