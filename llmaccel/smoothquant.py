"""SmoothQuant (Xiao et al., 2023, arXiv 2211.10438): make activations easy to quantize per token.

LLM activations have a few input channels that are 10-100x larger than the
rest in every token.  Per-token int8 quantization takes its scale from the
largest value of the token, so those channels crush every other channel to
a handful of levels.  For a Linear ``y = x @ W.T`` and any positive
per-input-channel ``s``::

    y = (x / s) @ (W * s).T

so dividing the outlier channels of x by a large ``s_j`` and multiplying the
matching weight columns by it moves the range problem from the activations
to the weights, which are quantized per output channel and absorb it
easily.  SmoothQuant's choice, with ``alpha`` the migration strength::

    s_j = max|X_j| ** alpha / max_over_group|W_:,j| ** (1 - alpha)     (clamped to >= 1e-5)

where ``max|X_j|`` comes from calibration batches and the weight max is taken
over every Linear that reads the same input.  Channels where either max is
zero get ``s_j = 1`` (nothing to migrate, and a tiny ``s_j`` would blow up
``x / s`` for inputs that do use the channel later).

Where ``1/s`` goes:

* **Folded** (free at run time): a Linear whose input is exactly the output
  of an ``nn.LayerNorm`` / ``nn.RMSNorm`` (the q/k/v or up/gate projections of
  a pre-norm transformer).  ``smooth_`` divides the norm's weight and bias by
  ``s`` and multiplies the weight columns of every Linear reading that output
  by ``s``: the float model computes the same function, and
  ``quantize_`` later quantizes the smoothed weights.
* **Unfolded**: any other Linear (input from a GELU, an attention product, a
  norm whose output is also used elsewhere, e.g. by a residual add in a
  post-norm model, ...).  There is no preceding op to absorb ``1/s``, so
  ``smooth_`` leaves the float layer untouched, returns ``s`` in
  ``report.smooth_scales[fqn]`` and records it on the Linear itself; the
  next ``quantize_(model)`` picks it up (``Int8Linear.from_linear(linear,
  smooth_scale=s)``: quantizes ``W * s`` and divides x by ``s`` in its
  forward) and its summary says ``smooth yes`` for that layer.  Recorded
  scales live on the module objects, not in ``state_dict``: quantize the
  same model object you smoothed (or pass ``smooth_scales=`` explicitly).

Usage::

    report = llmaccel.smooth_(model, calib_batches, alpha=0.5)
    print(report)
    print(llmaccel.quantize_(model, llmaccel.Int8Config(act="dynamic")))   # applies folded and unfolded scales

How the norm -> Linear edges are found: during calibration a forward hook on
every norm records its output tensor, a forward pre-hook on every Linear
checks whether its input *is* (object identity) one of those tensors, and a
``TorchFunctionMode`` watches every other torch op that touches a recorded
norm output (a residual add, a view, a dtype change, an in-place write,
being returned from the model; ops that hand back the very same tensor, like
``x.to(x.dtype)`` or ``x.contiguous()``, are followed through): such a norm is
not folded, because its other readers would see the change.
After folding, the first calibration batch is run again and the outputs are
compared with the originals; if they moved more than the tolerance, every
fold is undone and those Linears get unfolded scales instead (a warning says
so).  Calibration and the check run in ``eval()`` mode under ``no_grad``;
the modules' training flags are restored afterwards.  The check keeps a copy
of the folded parameters until it passes.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

__all__ = ["smooth_", "SmoothReport", "smooth_scales_for", "recorded_smooth_scale", "NORM_TYPES"]

NORM_TYPES: tuple = (nn.LayerNorm, nn.RMSNorm)
# Attribute of an nn.Linear holding the unfolded scale smooth_ recorded for quantize_ (a plain attribute:
# not a parameter or buffer, so state_dict, parameters() and buffers() do not change).
SMOOTH_ATTR = "_llmaccel_smooth_scale"
MIN_SCALE = 1e-5

# Reading these from a norm's output does not depend on its values.
_META_METHODS = frozenset({"size", "dim", "numel", "nelement", "stride", "is_contiguous", "is_floating_point",
                           "is_complex", "element_size", "__len__", "data_ptr", "storage_offset", "get_device",
                           "dim_order"})
_META_ATTRS = frozenset({"shape", "dtype", "device", "ndim", "requires_grad", "is_cuda", "is_cpu", "is_meta",
                         "layout", "is_sparse", "is_quantized", "grad_fn", "is_leaf", "names", "_version"})


def smooth_scales_for(act_absmax: Tensor, weight_absmax: Tensor, alpha: float) -> Tensor:
    """``s = act_absmax**alpha / weight_absmax**(1-alpha)`` per input channel, fp32, clamped to >= 1e-5.

    Channels where either max is zero or the result is not finite get ``s = 1``
    (nothing to migrate; a tiny ``s`` there would blow up x / s at run time).
    """
    a = act_absmax.detach().to(torch.float32)
    w = weight_absmax.detach().to(device=a.device, dtype=torch.float32)
    s = (a.pow(alpha) / w.clamp(min=MIN_SCALE).pow(1.0 - alpha)).clamp(min=MIN_SCALE)
    ok = (a > 0) & (w > 0) & torch.isfinite(s)
    return torch.where(ok, s, torch.ones_like(s))


@dataclass
class SmoothReport:
    """What :func:`smooth_` measured and changed.

    folded:        norm fqn -> the Linears whose smoothing was folded into it (float model changed, same function)
    folded_scales: norm fqn -> the ``s`` folded there
    smooth_scales: Linear fqn -> ``s`` for ``Int8Linear.from_linear(smooth_scale=...)`` (float layer untouched)
    unfolded:      Linear fqn -> why its ``s`` could not be folded
    not_seen:      Linears never called during calibration (no statistics, nothing done)
    act_absmax:    Linear fqn -> per-input-channel max |x| seen during calibration (before smoothing)
    max_output_change: the verification's relative change of the model output (None: not checked)
    """

    alpha: float
    num_batches: int
    folded: dict[str, list[str]] = field(default_factory=dict)
    folded_scales: dict[str, Tensor] = field(default_factory=dict, repr=False)
    smooth_scales: dict[str, Tensor] = field(default_factory=dict, repr=False)
    unfolded: dict[str, str] = field(default_factory=dict)
    not_seen: list[str] = field(default_factory=list)
    act_absmax: dict[str, Tensor] = field(default_factory=dict, repr=False)
    max_output_change: Optional[float] = None

    def __str__(self) -> str:
        n_folded = sum(len(v) for v in self.folded.values())
        lines = [f"smooth_ (alpha={self.alpha}, {self.num_batches} calibration batches): {n_folded} Linears folded "
                 f"into {len(self.folded)} norms, {len(self.smooth_scales)} with unfolded smooth_scale, "
                 f"{len(self.not_seen)} not seen"]
        for norm, lins in self.folded.items():
            s = self.folded_scales[norm]
            lines.append(f"  fold  {norm} -> {', '.join(lins)}   (s in [{s.min().item():.3g}, {s.max().item():.3g}])")
        for fqn, why in self.unfolded.items():
            lines.append(f"  scale {fqn}: {why}")
        for fqn in self.not_seen:
            lines.append(f"  skip  {fqn}: not called during calibration")
        if self.max_output_change is not None:
            lines.append(f"float output change after folding (relative to max |output|): {self.max_output_change:.2e}")
        if self.smooth_scales:
            lines.append(f"{len(self.smooth_scales)} unfolded smooth_scales are recorded on their Linears: "
                         f"llmaccel.quantize_(model) applies them")
        return "\n".join(lines)


def _leaves(obj: Any, depth: int = 0):
    """Tensors inside nested tuples / lists / dicts (HF ModelOutput is a dict)."""
    if isinstance(obj, Tensor):
        yield obj
    elif depth > 16:
        return
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _leaves(v, depth + 1)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _leaves(v, depth + 1)


def _func_name(func) -> str:
    name = getattr(func, "__name__", None) or repr(func)
    owner = getattr(func, "__self__", None)
    if name == "__get__" and owner is not None:
        return f"Tensor.{getattr(owner, '__name__', '?')}"
    return name


def _is_metadata(func) -> bool:
    name = getattr(func, "__name__", "")
    if name == "__get__":
        return getattr(getattr(func, "__self__", None), "__name__", None) in _META_ATTRS
    return name in _META_METHODS


def _is_inplace(func) -> bool:
    name = getattr(func, "__name__", "")
    return (name.endswith("_") and not name.endswith("__")) or name.startswith("__i") or name == "__setitem__"


class _Calibration:
    """Per-run state shared by the hooks and the function mode."""

    def __init__(self, linears: dict[str, nn.Linear]):
        self.in_hook = False
        self.norm_out: dict[int, tuple[Tensor, str]] = {}  # id -> (tensor kept alive for the batch, norm fqn)
        self.linear_weights = {id(m.weight) for m in linears.values()}
        self.absmax: dict[str, Tensor] = {}
        self.producers: dict[str, set] = {}  # linear fqn -> {norm fqn or None}
        self.other_use: dict[str, str] = {}  # norm fqn -> an op that also read its output

    def norm_of(self, t: Tensor) -> Optional[str]:
        entry = self.norm_out.get(id(t))
        return entry[1] if entry is not None and entry[0] is t else None

    def norm_hook(self, name: str):
        def hook(module, args, out):
            if isinstance(out, Tensor):
                self.norm_out[id(out)] = (out, name)
        return hook

    def linear_hook(self, name: str):
        def hook(module, args, kwargs):
            x = args[0] if args else kwargs.get("input")
            if not isinstance(x, Tensor) or x.numel() == 0:
                return
            self.in_hook = True  # our own statistics ops are not "other uses"
            try:
                cur = x.detach().abs().reshape(-1, x.shape[-1]).amax(0).to(torch.float32)
                prev = self.absmax.get(name)
                self.absmax[name] = cur if prev is None else torch.maximum(prev, cur)
                self.producers.setdefault(name, set()).add(self.norm_of(x))
            finally:
                self.in_hook = False
        return hook

    def note_uses(self, func, args, kwargs, result) -> None:
        for t in _leaves((args, kwargs)):
            name = self.norm_of(t)
            if name is None or name in self.other_use:
                continue
            if func is F.linear and len(args) >= 2 and args[0] is t and id(args[1]) in self.linear_weights:
                continue  # an nn.Linear reading the norm output: the edge the pre-hook recorded
            if _is_metadata(func):
                continue
            if result is t and not _is_inplace(func):
                continue  # returned unchanged (x.to(its own dtype), x.contiguous()): its readers are x's readers
            self.other_use[name] = _func_name(func)

    def end_batch(self, output) -> None:
        self.in_hook = True
        try:
            for t in _leaves(output):
                name = self.norm_of(t)
                if name is not None:
                    self.other_use.setdefault(name, "being returned from the model")
        finally:
            self.in_hook = False
        self.norm_out.clear()


class _UseTracker(TorchFunctionMode):
    def __init__(self, calib: _Calibration):
        super().__init__()
        self.calib = calib

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        c = self.calib
        if c.norm_out and not c.in_hook:
            c.note_uses(func, args, kwargs, result)
        return result


def _param_owners(model: nn.Module) -> dict[int, list[str]]:
    owners: dict[int, list[str]] = {}
    for mname, mod in model.named_modules():
        for pname, p in mod._parameters.items():
            if p is not None:
                owners.setdefault(id(p), []).append(f"{mname}.{pname}" if mname else pname)
    return owners


def _relative_change(ref: list[Tensor], new: list[Tensor]) -> float:
    if len(ref) != len(new):
        return float("inf")
    worst = 0.0
    for a, b in zip(ref, new):
        if a.shape != b.shape:
            return float("inf")
        if not a.is_floating_point():
            continue
        a64, b64 = a.double(), b.double()
        denom = a64.abs().max().item() if a64.numel() else 0.0
        diff = (a64 - b64).abs().max().item() if a64.numel() else 0.0
        if diff != diff:  # NaN
            return float("inf")
        worst = max(worst, diff / denom if denom > 0 else diff)
    return worst


def smooth_(model: nn.Module, calibration_batches: Iterable, alpha: float = 0.5, *,
            forward_fn: Callable[[nn.Module, Any], Any] | None = None, verify: bool = True,
            verify_rtol: float | None = None) -> SmoothReport:
    """SmoothQuant a float model in place (module docstring); returns a :class:`SmoothReport`.

    calibration_batches: iterable of model inputs; each is run as ``model(batch)``, or
        ``forward_fn(model, batch)`` when given (tuples, dicts, HF kwargs...).
    alpha: migration strength in [0, 1] (0.5 is SmoothQuant's default; LLMs often use 0.75-0.85).
    verify: rerun the first batch after folding; undo every fold if the output moved by more than
        ``verify_rtol`` times its max magnitude (default 1e-4, or 3e-2 when a folded parameter is fp16/bf16).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"smooth_: model must be an nn.Module, got {type(model).__name__}")
    if not (isinstance(alpha, (int, float)) and 0.0 <= float(alpha) <= 1.0):
        raise ValueError(f"smooth_: alpha must be in [0, 1], got {alpha!r}")
    alpha = float(alpha)
    run = forward_fn if forward_fn is not None else (lambda m, b: m(b))

    from ._linear_swap import conv1d_to_linear_

    conv1d_to_linear_(model)  # GPT-2-style Conv1D projections become the Linears they are
    named = dict(model.named_modules())
    linears = {fqn: m for fqn, m in named.items() if isinstance(m, nn.Linear)}
    norms = {fqn: m for fqn, m in named.items() if isinstance(m, NORM_TYPES)}
    calib = _Calibration(linears)
    handles = [m.register_forward_hook(calib.norm_hook(fqn)) for fqn, m in norms.items()]
    handles += [m.register_forward_pre_hook(calib.linear_hook(fqn), with_kwargs=True) for fqn, m in linears.items()]
    training = {m: m.training for m in model.modules()}
    first_batch, reference, num_batches = None, None, 0
    model.eval()
    try:
        with torch.no_grad(), _UseTracker(calib):
            for batch in calibration_batches:
                out = run(model, batch)
                calib.end_batch(out)
                if num_batches == 0:
                    first_batch = batch
                    reference = [t.detach().clone() for t in _leaves(out)] if verify else None
                num_batches += 1
                del out
    finally:
        for h in handles:
            h.remove()
        calib.norm_out.clear()
        for m, flag in training.items():
            m.training = flag
    if num_batches == 0:
        raise ValueError("smooth_: calibration_batches yielded no batches")

    report = SmoothReport(alpha=alpha, num_batches=num_batches, act_absmax=dict(calib.absmax))
    owners = _param_owners(model)

    def shared(p: Optional[Tensor]) -> Optional[str]:
        names = owners.get(id(p), []) if p is not None else []
        return f"{names[0]} is shared with {', '.join(names[1:])}" if len(names) > 1 else None

    # Group the Linears by the norm feeding them.
    groups: dict[str, list[str]] = {}
    for fqn in linears:
        prods = calib.producers.get(fqn)
        if prods is None:
            report.not_seen.append(fqn)
        elif prods == {None}:
            report.unfolded[fqn] = "its input is not the output of a LayerNorm/RMSNorm"
        elif len(prods) > 1:
            srcs = ", ".join(sorted("another op" if p is None else f"'{p}'" for p in prods))
            report.unfolded[fqn] = f"its input came from different places across calls ({srcs})"
        else:
            groups.setdefault(next(iter(prods)), []).append(fqn)

    foldable: dict[str, list[str]] = {}
    for norm_fqn, members in groups.items():
        norm = norms[norm_fqn]
        reason = None
        if getattr(norm, "weight", None) is None:
            reason = f"'{norm_fqn}' has no affine weight to fold 1/s into"
        elif norm_fqn in calib.other_use:
            reason = (f"the output of '{norm_fqn}' is also read by {calib.other_use[norm_fqn]} (e.g. a residual "
                      f"connection), which folding would change")
        else:
            for p in [norm.weight, getattr(norm, "bias", None)] + [linears[f].weight for f in members]:
                why = shared(p)
                if why:
                    reason = f"{why} (a tied weight cannot be rescaled for one user only)"
                    break
        if reason is None:
            foldable[norm_fqn] = members
        else:
            for f in members:
                report.unfolded[f] = reason

    def weight_absmax(fqns: list[str]) -> Tensor:
        return torch.stack([linears[f].weight.detach().abs().amax(0).to(torch.float32) for f in fqns]).amax(0)

    def own_scale(fqn: str) -> Tensor:
        w = linears[fqn].weight
        return smooth_scales_for(calib.absmax[fqn].to(w.device), weight_absmax([fqn]), alpha)

    # Fold, keeping what is needed to undo it.
    undo: list[tuple[Tensor, Tensor]] = []
    half = False
    with torch.no_grad():
        for norm_fqn, members in foldable.items():
            norm = norms[norm_fqn]
            dev = norm.weight.device
            xmax = torch.stack([calib.absmax[f].to(dev) for f in members]).amax(0)
            s = smooth_scales_for(xmax, weight_absmax(members).to(dev), alpha)
            params = [norm.weight] + ([norm.bias] if getattr(norm, "bias", None) is not None else [])
            for p in params:
                if verify:
                    undo.append((p, p.detach().clone()))
                half |= p.dtype in (torch.float16, torch.bfloat16)
                p.copy_((p.to(torch.float32) / s.to(p.device)).to(p.dtype))
            for f in members:
                w = linears[f].weight
                if verify:
                    undo.append((w, w.detach().clone()))
                half |= w.dtype in (torch.float16, torch.bfloat16)
                w.copy_((w.to(torch.float32) * s.to(w.device).unsqueeze(0)).to(w.dtype))
            report.folded[norm_fqn] = list(members)
            report.folded_scales[norm_fqn] = s

    if verify and foldable:
        tol = verify_rtol if verify_rtol is not None else (3e-2 if half else 1e-4)
        model.eval()
        try:
            with torch.no_grad():
                new = [t.detach() for t in _leaves(run(model, first_batch))]
        finally:
            for m, flag in training.items():
                m.training = flag
        if not reference:
            warnings.warn("smooth_: the model output holds no tensors, so the folds could not be verified",
                          RuntimeWarning, stacklevel=2)
        change = _relative_change(reference, new)
        report.max_output_change = change
        if not change <= tol:
            with torch.no_grad():
                for p, saved in undo:
                    p.copy_(saved)
            warnings.warn(f"smooth_: folding changed the model output on the first calibration batch by {change:.3g} "
                          f"(relative; tolerance {tol:.1e}), so every fold was undone and those Linears get "
                          f"unfolded smooth_scales instead. Is the model deterministic in eval() mode?",
                          RuntimeWarning, stacklevel=2)
            for norm_fqn, members in report.folded.items():
                for f in members:
                    report.unfolded[f] = (f"folding into '{norm_fqn}' changed the model output by {change:.3g} "
                                          f"(> {tol:.1e}); undone")
            report.folded.clear()
            report.folded_scales.clear()
    del undo

    report.unfolded = {f: report.unfolded[f] for f in linears if f in report.unfolded}  # model order
    for fqn in report.unfolded:
        report.smooth_scales[fqn] = own_scale(fqn)
    # Record each unfolded scale on its Linear, where quantize_ picks it up (a later smooth_ replaces them).
    for fqn, lin in linears.items():
        if fqn in report.smooth_scales:
            setattr(lin, SMOOTH_ATTR, report.smooth_scales[fqn])
        elif hasattr(lin, SMOOTH_ATTR):
            delattr(lin, SMOOTH_ATTR)
    return report


def recorded_smooth_scale(linear: nn.Module) -> Optional[Tensor]:
    """The unfolded SmoothQuant scale :func:`smooth_` recorded on ``linear`` (None if there is none)."""
    return getattr(linear, SMOOTH_ATTR, None)
