"""``quantize_``: swap a model's ``nn.Linear`` layers for :class:`llmaccel.nn.Int8Linear`, in place.

Calling convention follows torchao's ``quantize_(model, config, filter_fn)``::

    import llmaccel
    summary = llmaccel.quantize_(model, llmaccel.Int8Config(act="dynamic"))
    print(summary)                      # what was swapped, what was skipped and why, bytes saved

``filter_fn(module, fqn) -> bool`` (optional) is asked about every
``nn.Linear``; ``False`` keeps that layer in floating point.  transformers' ``Conv1D`` layers (GPT-2's
projections: a Linear with its weight stored transposed) are first replaced by the ``nn.Linear`` they
compute (:func:`llmaccel._linear_swap.conv1d_to_linear_`), so GPT-2-style models quantize like any other.

Skipped by default (``Int8Config(skip_output_head=True)``): output heads
(the logits are the layer most sensitive to quantization error), recognized
statically, without running the model, as

* a Linear registered at the top level of the model under one of the names
  ``lm_head``, ``output``, ``classifier``, ``score`` (``model.lm_head``, not
  ``model.decoder.output``);
* any Linear whose weight *is* (same Parameter object) the weight of an
  ``nn.Embedding`` (a tied LM head: quantizing it would not free the shared
  float weight either);
* when the model is an ``nn.Sequential``: its last module that has
  parameters, if that is an ``nn.Linear`` (only parameter-free modules such as
  activations, dropout or softmax follow it, so its output is the model's
  output; trailing nested ``nn.Sequential`` are searched the same way).

A head under any other name (``model.decoder.proj``) is quantized: keep it in
floating point with ``filter_fn=lambda mod, fqn: fqn != "decoder.proj"``.

Always skipped: the ``out_proj`` of ``nn.MultiheadAttention`` (its forward reads
``out_proj.weight`` directly instead of calling the layer), Linears smaller
than ``Int8Config.min_features`` and, for ``act="dynamic"``, Linears whose
``in_features`` could overflow the exact int32 accumulator.

Torch's fused inference paths (``nn.TransformerEncoderLayer``'s
``torch._transformer_encoder_layer_fwd``, ``nn.TransformerEncoder``'s nested
tensors) read a layer's weights directly, bypassing the swapped modules;
``quantize_`` keeps them off for every layer that holds an Int8Linear (see
``llmaccel/_swap.py``), so the model is correct in train, eval, ``no_grad``
and ``inference_mode``.

SmoothQuant: :func:`llmaccel.smoothquant.smooth_` folds what it can into
the norms (nothing left to do here) and records the scales it could not fold
on their Linears; ``quantize_`` picks those up, builds those layers with
``Int8Linear.from_linear(..., smooth_scale=s)`` and says ``smooth yes`` in
the summary.  ``smooth_scales={fqn: s}`` passes scales explicitly (they win
over recorded ones for the same layer).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional

import torch
from torch import Tensor, nn

from ._linear_swap import conv1d_to_linear_, linear_sites, replace_linears, summary_tail
from ._swap import after_swap
from .nn.int8_linear import ACT_MODES, Int8Linear
from .ops.int8_mm import MAX_K
from .smoothquant import recorded_smooth_scale

__all__ = ["Int8Config", "QuantizeSummary", "quantize_", "output_heads", "OUTPUT_HEAD_NAMES"]

OUTPUT_HEAD_NAMES = ("lm_head", "output", "classifier", "score")


@dataclass
class Int8Config:
    """How :func:`quantize_` converts Linears.

    act:              ``Int8Linear`` mode: ``"dynamic"`` (W8A8), ``"weight_only"`` or ``"auto"``.
    skip_output_head: keep output heads in floating point (module docstring).
    min_features:     keep Linears with ``in_features`` or ``out_features`` below this in floating point.
    """

    act: str = "dynamic"
    skip_output_head: bool = True
    min_features: int = 1

    def __post_init__(self) -> None:
        if self.act not in ACT_MODES:
            raise ValueError(f"Int8Config: act must be one of {ACT_MODES}, got {self.act!r}")
        if not isinstance(self.min_features, int) or isinstance(self.min_features, bool) or self.min_features < 1:
            raise ValueError(f"Int8Config: min_features must be an int >= 1, got {self.min_features!r}")


@dataclass
class SwappedLayer:
    fqn: str
    in_features: int
    out_features: int
    smoothed: bool
    bytes_before: int  # weight + bias of the nn.Linear
    bytes_after: int   # weight + weight_scale + bias (+ smooth_scale) of the Int8Linear


@dataclass
class QuantizeSummary:
    """What :func:`quantize_` did.  ``bytes_*`` count the whole model (unique parameters and buffers)."""

    act: str
    swapped: list[str]
    skipped: dict[str, str]  # fqn -> reason
    bytes_before: int
    bytes_after: int
    layers: list[SwappedLayer] = field(default_factory=list, repr=False)
    # Torch modules changed so their inference fast paths cannot bypass the swapped layers (llmaccel/_swap.py).
    fastpath: list[str] = field(default_factory=list, repr=False)
    bytes_saved: int = field(init=False)

    def __post_init__(self) -> None:
        self.bytes_saved = self.bytes_before - self.bytes_after

    def __str__(self) -> str:
        lines = [f"quantize_: {len(self.swapped)} nn.Linear -> Int8Linear (act={self.act}), "
                 f"{len(self.skipped)} skipped"]
        if self.layers:
            w = max(len("module"), *(len(r.fqn) for r in self.layers))
            lines.append(f"  {'module':<{w}}  {'out x in':>13}  {'smooth':>6}  {'bytes before':>14}  {'after':>12}")
            for r in self.layers:
                shape = f"{r.out_features} x {r.in_features}"
                lines.append(f"  {r.fqn:<{w}}  {shape:>13}  {'yes' if r.smoothed else 'no':>6}  "
                             f"{r.bytes_before:>14,}  {r.bytes_after:>12,}")
        lines += summary_tail(self.skipped, self.fastpath, self.bytes_before, self.bytes_after)
        return "\n".join(lines)


def _model_bytes(model: nn.Module) -> int:
    # parameters() / buffers() yield each tensor once, so tied weights count once.
    return sum(t.numel() * t.element_size() for t in model.parameters()) + \
        sum(t.numel() * t.element_size() for t in model.buffers())


def _tensor_bytes(*ts) -> int:
    return sum(t.numel() * t.element_size() for t in ts if t is not None)


def _head_reason(fqn: str, mod: nn.Linear, embeddings: dict[int, str], seq_head: Optional[nn.Linear]) -> Optional[str]:
    """Why ``mod`` is an output head (module docstring's rules), or None when it is not one."""
    if "." not in fqn and fqn in OUTPUT_HEAD_NAMES:
        return f"output head (top-level '{fqn}')"
    if mod is seq_head:
        return "output head (last layer with parameters of the nn.Sequential model)"
    emb = embeddings.get(id(mod.weight))
    if emb is not None:
        return f"output head (weight tied to nn.Embedding '{emb}')"
    return None


def output_heads(model: nn.Module) -> dict[str, tuple[str, bool]]:
    """The Linears of ``model`` that ``quantize_`` treats as output heads: ``{fqn: (why, tied)}``, ``tied``
    when the head's weight is an ``nn.Embedding``'s weight (quantizing it would not free the float copy)."""
    sites = linear_sites(model)
    heads = {}
    for fqn, mod in sites.linears.items():
        why = _head_reason(fqn, mod, sites.embeddings, sites.seq_head)
        if why is not None:
            heads[fqn] = (why, id(mod.weight) in sites.embeddings)
    return heads


def _skip_reason(fqn: str, mod: nn.Linear, config: Int8Config, embeddings: dict[int, str],
                 mha_out_proj: set[int], seq_head: Optional[nn.Linear]) -> Optional[str]:
    if id(mod) in mha_out_proj:
        return "out_proj of nn.MultiheadAttention (its forward reads the weight directly)"
    if config.skip_output_head:
        why = _head_reason(fqn, mod, embeddings, seq_head)
        if why is not None:
            return f"{why}; Int8Config(skip_output_head=False) quantizes it"
    if min(mod.in_features, mod.out_features) < config.min_features:
        return f"smaller than min_features={config.min_features} ({mod.out_features} x {mod.in_features})"
    if config.act == "dynamic" and mod.in_features > MAX_K:
        return f"in_features={mod.in_features} > {MAX_K}: int32 accumulation of act='dynamic' could overflow"
    return None


def quantize_(model: nn.Module, config: Int8Config | None = None,
              filter_fn: Callable[[nn.Module, str], bool] | None = None, *,
              smooth_scales: Mapping[str, Tensor] | None = None) -> QuantizeSummary:
    """Replace ``model``'s ``nn.Linear`` layers by :class:`Int8Linear` in place (module docstring).

    ``config`` defaults to ``Int8Config()``.  ``filter_fn(module, fqn)``
    returning False keeps a layer in floating point.  SmoothQuant scales that
    :func:`smooth_` recorded on the model's Linears are applied;
    ``smooth_scales`` (fqn -> scale) adds or overrides scales explicitly.
    A Linear registered under several names is converted once and the same
    Int8Linear is put at every name; it is reported under its first name.
    """
    if config is None:
        config = Int8Config()
    if not isinstance(config, Int8Config):
        raise TypeError(f"quantize_: config must be an Int8Config, got {type(config).__name__}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"quantize_: model must be an nn.Module, got {type(model).__name__}")
    if isinstance(model, nn.Linear):
        raise TypeError("quantize_ swaps submodules in place and cannot replace the model object itself; "
                        "use Int8Linear.from_linear(linear) for a bare nn.Linear")

    conv1d_to_linear_(model)  # GPT-2-style Conv1D projections become the Linears they are
    sites = linear_sites(model)
    linears = sites.linears
    explicit = dict(smooth_scales or {})
    unknown = sorted(set(explicit) - set(linears))
    if unknown:
        raise ValueError(f"quantize_: smooth_scales names modules that are not nn.Linear layers of this model: "
                         f"{unknown}")
    # Scales smooth_ recorded on the layers, then the explicit ones (which win).
    smooth_scales = {fqn: s for fqn, m in linears.items() if (s := recorded_smooth_scale(m)) is not None}
    smooth_scales.update(explicit)

    bytes_before = _model_bytes(model)
    replaced, skipped = replace_linears(
        sites, filter_fn,
        lambda fqn, mod: _skip_reason(fqn, mod, config, sites.embeddings, sites.mha_out_proj, sites.seq_head),
        lambda fqn, mod: Int8Linear.from_linear(mod, act=config.act, smooth_scale=smooth_scales.get(fqn)))
    swapped = [fqn for fqn, _, _ in replaced]
    new_modules = [q for _, _, q in replaced]
    layers = [SwappedLayer(fqn, mod.in_features, mod.out_features, fqn in smooth_scales,
                           _tensor_bytes(mod.weight, mod.bias),
                           _tensor_bytes(q.weight, q.weight_scale, q.bias, q.smooth_scale))
              for fqn, mod, q in replaced]
    for fqn in smooth_scales:
        if fqn in skipped:
            skipped[fqn] += " (its smooth_scale is unused: smooth_ left the float layer unchanged)"
    fastpath = after_swap(model, new_modules)
    return QuantizeSummary(config.act, swapped, skipped, bytes_before, _model_bytes(model), layers, fastpath)
