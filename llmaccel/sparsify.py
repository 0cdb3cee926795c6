"""``sparsify_``: prune a model's ``nn.Linear`` layers and swap them for :class:`llmaccel.nn.SparseLinear`, in place.

Calling convention follows torchao's (and :func:`llmaccel.quantize_`'s)::

    summary = llmaccel.sparsify_(model, llmaccel.SparsityConfig(pattern="2:4"))
    print(summary)     # what was pruned, the sparsity reached, what was skipped and why, bytes saved

    # Wanda: rank weights by |w| * ||x_k||, with activation norms from a few calibration batches
    llmaccel.sparsify_(model, llmaccel.SparsityConfig(pattern="2:4", method="wanda"), calibration=batches)

``filter_fn(module, fqn) -> bool`` is asked about every ``nn.Linear``; ``False`` keeps it dense.  Skipped by
default, like ``quantize_`` (``SparsityConfig(skip_output_head=True)``): output heads (a top-level
``lm_head`` / ``output`` / ``classifier`` / ``score``, the last Linear of an ``nn.Sequential`` model);
always: a Linear whose weight is tied to an ``nn.Embedding`` and the ``out_proj`` of ``nn.MultiheadAttention``.  Torch's
fused inference paths are kept off the swapped layers (``llmaccel/_swap.py``).

With ``quantize_`` (int8): the supported order is **sparsify_ first**.  ``SparsityConfig(quantize="int8")``
gives sparse int8 layers; a later ``quantize_`` converts only the Linears ``sparsify_`` left dense (it
touches ``nn.Linear`` only).  ``sparsify_`` on a model that already holds ``Int8Linear`` layers raises:
pruning an int8 weight would prune the rounded weight and re-quantize it (prune the float model with
``quantize="int8"`` instead).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional

from torch import nn

from ._swap import after_swap
from .nn.int8_linear import Int8Linear
from .nn.sparse_linear import SparseLinear
from ._linear_swap import conv1d_to_linear_, linear_sites, replace_linears, summary_tail
from .quantize import OUTPUT_HEAD_NAMES, _model_bytes, _tensor_bytes
from .sparsity import calibrate
from .sparsity._checks import parse_nm
from .sparsity.prune import METHODS

__all__ = ["SparsityConfig", "SparsifySummary", "sparsify_"]


@dataclass
class SparsityConfig:
    """How :func:`sparsify_` prunes (the arguments of ``SparseLinear.from_linear``).

    pattern:          ``"N:M"`` (``"2:4"``...), ``"unstructured"`` or ``"block"``.
    sparsity:         fraction pruned in (0, 1) for ``"unstructured"`` / ``"block"``; None for N:M.
    method:           ``"magnitude"``, ``"wanda"`` or ``"sparsegpt"`` (N:M only: the kept weights corrected
                      for the dropped ones, ``llmaccel.sparsity.sparsegpt_prune``); the last two need
                      ``calibration``.
    quantize:         None, or ``"int8"`` (int8 values, per-output-channel scales).
    act:              ``"none"`` (x stays float), or ``"dynamic"`` with ``quantize="int8"`` (x quantized per
                      token, int8 x int8: ``SparseLinear``'s W8A8 mode).
    block_size:       ``(rows, cols)`` tiles of ``"block"``.
    calibration:      batches for Wanda's activation norms (``llmaccel.sparsity.calibrate``); each runs as
                      ``model(batch)``, or ``forward_fn(model, batch)``.
    skip_output_head: keep output heads dense (module docstring).
    min_features:     keep Linears with ``in_features`` or ``out_features`` below this dense.
    """

    pattern: str = "2:4"
    sparsity: Optional[float] = None
    method: str = "magnitude"
    quantize: Optional[str] = None
    act: str = "none"
    block_size: tuple = (32, 32)
    calibration: Optional[Iterable] = field(default=None, repr=False)
    forward_fn: Optional[Callable[[nn.Module, Any], Any]] = field(default=None, repr=False)
    skip_output_head: bool = True
    min_features: int = 1

    def __post_init__(self) -> None:
        where = "SparsityConfig"
        if self.pattern not in ("unstructured", "block"):
            parse_nm(self.pattern, where)
            if self.sparsity is not None:
                raise ValueError(f"{where}: pattern {self.pattern!r} fixes the sparsity; pass sparsity=None")
        elif isinstance(self.sparsity, bool) or not isinstance(self.sparsity, (int, float)) \
                or not 0.0 < float(self.sparsity) < 1.0:
            raise ValueError(f"{where}: pattern {self.pattern!r} needs sparsity, a float in (0, 1); "
                             f"got {self.sparsity!r}")
        if self.method not in METHODS + ("sparsegpt",):
            raise ValueError(f"{where}: method must be one of {METHODS + ('sparsegpt',)}, got {self.method!r}")
        if self.method == "sparsegpt" and self.pattern in ("unstructured", "block"):
            raise ValueError(f"{where}: method='sparsegpt' takes an N:M pattern, got {self.pattern!r}")
        if self.quantize not in (None, "int8"):
            raise ValueError(f"{where}: quantize must be None or 'int8', got {self.quantize!r}")
        if self.act not in ("none", "dynamic") or (self.act == "dynamic" and self.quantize != "int8"):
            raise ValueError(f"{where}: act must be 'none', or 'dynamic' with quantize='int8'; got act={self.act!r}, "
                             f"quantize={self.quantize!r}")
        if not isinstance(self.min_features, int) or isinstance(self.min_features, bool) or self.min_features < 1:
            raise ValueError(f"{where}: min_features must be an int >= 1, got {self.min_features!r}")


@dataclass
class SparsifiedLayer:
    fqn: str
    in_features: int
    out_features: int
    sparsity: float    # fraction of zeros in the pruned weight
    bytes_before: int  # weight + bias of the nn.Linear
    bytes_after: int   # compressed weight + bias of the SparseLinear


@dataclass
class SparsifySummary:
    """What :func:`sparsify_` did.  ``bytes_*`` count the whole model (unique parameters and buffers)."""

    pattern: str
    swapped: list[str]
    skipped: dict[str, str]
    bytes_before: int
    bytes_after: int
    layers: list[SparsifiedLayer] = field(default_factory=list, repr=False)
    fastpath: list[str] = field(default_factory=list, repr=False)
    bytes_saved: int = field(init=False)
    sparsity: float = field(init=False)  # over the swapped layers' weights

    def __post_init__(self) -> None:
        self.bytes_saved = self.bytes_before - self.bytes_after
        total = sum(r.in_features * r.out_features for r in self.layers)
        self.sparsity = sum(r.sparsity * r.in_features * r.out_features for r in self.layers) / total if total else 0.0

    def __str__(self) -> str:
        lines = [f"sparsify_: {len(self.swapped)} nn.Linear -> SparseLinear (pattern={self.pattern}), "
                 f"{len(self.skipped)} skipped, sparsity reached {100 * self.sparsity:.1f}%"]
        if self.layers:
            w = max(len("module"), *(len(r.fqn) for r in self.layers))
            lines.append(f"  {'module':<{w}}  {'out x in':>13}  {'sparsity':>8}  {'bytes before':>14}  {'after':>12}")
            for r in self.layers:
                lines.append(f"  {r.fqn:<{w}}  {f'{r.out_features} x {r.in_features}':>13}  "
                             f"{100 * r.sparsity:>7.1f}%  {r.bytes_before:>14,}  {r.bytes_after:>12,}")
        lines += summary_tail(self.skipped, self.fastpath, self.bytes_before, self.bytes_after)
        return "\n".join(lines)


def _skip_reason(fqn, mod, config, embeddings, mha_out_proj, seq_head) -> Optional[str]:
    if id(mod) in mha_out_proj:
        return "out_proj of nn.MultiheadAttention (its forward reads the weight directly)"
    emb = embeddings.get(id(mod.weight))
    if emb is not None:  # always: a SparseLinear would hold a pruned copy and break the tie
        return f"weight tied to nn.Embedding '{emb}' (a pruned copy would untie it)"
    if config.skip_output_head:
        if "." not in fqn and fqn in OUTPUT_HEAD_NAMES:
            return f"output head (top-level '{fqn}'); SparsityConfig(skip_output_head=False) prunes it"
        if mod is seq_head:
            return ("output head (last layer with parameters of the nn.Sequential model); "
                    "SparsityConfig(skip_output_head=False) prunes it")
    if min(mod.in_features, mod.out_features) < config.min_features:
        return f"smaller than min_features={config.min_features} ({mod.out_features} x {mod.in_features})"
    return None


def sparsify_(model: nn.Module, config: SparsityConfig | None = None,
              filter_fn: Callable[[nn.Module, str], bool] | None = None, *,
              calibration: Optional[Iterable] = None) -> SparsifySummary:
    """Replace ``model``'s ``nn.Linear`` layers by pruned :class:`SparseLinear` in place (module docstring).

    ``config`` defaults to ``SparsityConfig()`` (2:4 magnitude).  ``calibration`` (Wanda's batches) may be
    given here or in the config, not both.  A Linear registered under several names is converted once and
    the same SparseLinear put at every name; it is reported under its first name.
    """
    if config is None:
        config = SparsityConfig()
    if not isinstance(config, SparsityConfig):
        raise TypeError(f"sparsify_: config must be a SparsityConfig, got {type(config).__name__}")
    if calibration is not None:
        if config.calibration is not None:
            raise ValueError("sparsify_: calibration is given both as an argument and in the SparsityConfig")
        config = dataclasses.replace(config, calibration=calibration)
    if config.method in ("wanda", "sparsegpt") and config.calibration is None:
        raise ValueError(f"sparsify_: method={config.method!r} needs calibration batches (calibration=[batch, ...])")
    if config.method == "magnitude" and config.calibration is not None:
        raise ValueError("sparsify_: calibration is only used by method='wanda' and 'sparsegpt'")
    if not isinstance(model, nn.Module):
        raise TypeError(f"sparsify_: model must be an nn.Module, got {type(model).__name__}")
    if isinstance(model, nn.Linear):
        raise TypeError("sparsify_ swaps submodules in place and cannot replace the model object itself; "
                        "use SparseLinear.from_linear(linear) for a bare nn.Linear")
    conv1d_to_linear_(model)  # GPT-2-style Conv1D projections become the Linears they are
    sites = linear_sites(model)
    quantized = [fqn for fqn, m in model.named_modules() if isinstance(m, Int8Linear)]
    if quantized:
        raise ValueError(f"sparsify_: the model already holds Int8Linear layers ({quantized[:3]}...): run "
                         f"sparsify_ before quantize_, with SparsityConfig(quantize='int8') for sparse int8 layers")
    norms = {}  # Wanda: per-channel input norms; SparseGPT: the inputs' X^T X
    if config.method in ("wanda", "sparsegpt"):
        norms = calibrate(model, config.calibration, forward_fn=config.forward_fn, gram=config.method == "sparsegpt")
    gram = config.method == "sparsegpt"

    def reason_of(fqn, mod):
        reason = _skip_reason(fqn, mod, config, sites.embeddings, sites.mha_out_proj, sites.seq_head)
        if reason is None and config.method in ("wanda", "sparsegpt") and fqn not in norms:
            reason = f"method={config.method!r}: no calibration batch reached this layer"
        return reason

    bytes_before = _model_bytes(model)
    replaced, skipped = replace_linears(
        sites, filter_fn, reason_of,
        lambda fqn, mod: SparseLinear.from_linear(mod, config.pattern, sparsity=config.sparsity,
                                                  block_size=config.block_size, method=config.method,
                                                  quantize=config.quantize, act=config.act,
                                                  activation_norms=None if gram else norms.get(fqn),
                                                  activation_gram=norms.get(fqn) if gram else None))
    swapped = [fqn for fqn, _, _ in replaced]
    new_modules = [s for _, _, s in replaced]
    layers = [SparsifiedLayer(fqn, mod.in_features, mod.out_features, s.sparsity(),
                              _tensor_bytes(mod.weight, mod.bias), s.weight_bytes() + _tensor_bytes(s.bias))
              for fqn, mod, s in replaced]
    fastpath = after_swap(model, new_modules)
    return SparsifySummary(config.pattern, swapped, skipped, bytes_before, _model_bytes(model), layers, fastpath)
