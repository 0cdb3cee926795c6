"""``llmaccel.optimize``: one call that swaps llmaccel's fast parts into a model a user already has.

::

    model = llmaccel.optimize(model, attention=True, quantize="int8", calibration=batches)
    print(model.llmaccel_report)          # what was swapped, the kernels that run, bytes, calibration error

In place (the model is returned for chaining).  What it does, in this order:

1. ``sparsity`` (``"2:4"`` or a :class:`~llmaccel.SparsityConfig`): :func:`~llmaccel.sparsify_`, pruned
   ``SparseLinear`` layers.  With ``quantize`` too, the sparse values are stored int8
   (``SparsityConfig(quantize="int8")``): ``"int8-weight-only"`` keeps the activations float, ``"int8"``
   quantizes them per token as well (``act="dynamic"``: the int8 x int8 sparse kernel, W8A8 like the dense
   ``Int8Linear``; SmoothQuant is not applied to sparse layers).  ``method="wanda"`` (activation norms) and
   ``method="sparsegpt"`` (the inputs' ``X^T X``) take their statistics from ``calibration``.
2. ``quantize`` (``"int8"``: W8A8 dynamic ``Int8Linear``; ``"int8-weight-only"``: int8 weights, float
   activations): :func:`~llmaccel.quantize_`; with ``calibration`` and ``"int8"``, SmoothQuant
   (:func:`~llmaccel.smooth_`) first, its ``alpha`` chosen by measurement (``smooth_alpha="auto"``: each
   candidate, no smoothing included, applied to a copy and scored by the error on the calibration batches;
   :mod:`llmaccel._smooth_search`) or given (``smooth_alpha=0.5``; ``None``: no SmoothQuant).  Then a
   GELU / ReLU that provably follows an ``act="dynamic"`` Int8Linear moves into its epilogue
   (:func:`llmaccel._fuse_activation.fuse_activations_`), and so does a BERT block's residual add before its
   LayerNorm (:func:`llmaccel._fuse_residual.fuse_residuals_`); the report lists them.  Output heads
   (``quantize_``'s rules, :func:`~llmaccel.quantize.output_heads`), ``quantize_head=None`` (the default):

   * ``"int8-weight-only"``: an *untied* head is quantized too (int8 per-channel weights, float
     activations).  In a decoder it is a large share of the bytes every token reads: Llama-style, 8 layers,
     hidden 2048, vocab 32000, the rest int8, an fp32 head is 238 of the 595 MiB a token reads (int8: 407
     MiB in all), and weight-only rounding costs it little: ``bench/decoder_generate.py`` measured
     teacher-forced top-1 agreement with fp32 of 0.887 with the head int8 against 0.883 with it fp32 (256
     positions of a random-weight model, whose near-tied logits make any change flip some; torch.ao
     dynamic: 0.578) and the same first-step logit error (README, "Decoder generation").  A *tied* head
     stays float: its weight is the embedding's, which stays float, so quantizing would add an int8 copy
     and free nothing.
   * ``"int8"`` (W8A8): heads stay float (activation quantization of the logits layer is where the error
     shows first).

   ``quantize_head=True`` quantizes every head (tied ones too, as an int8 copy beside the float
   embedding), ``False`` keeps them all float.  The report's ``head`` line says what was done and why.
3. ``attention``: transformers models (and the transformers model inside a sentence-transformers model) get
   ``attn_implementation="llmaccel"`` (:mod:`llmaccel.integrations.transformers`); every plain
   ``nn.MultiheadAttention`` becomes :class:`llmaccel.nn.MultiheadAttention` in place (same parameters and
   state_dict keys; torch's fused encoder fast path is kept off the layers that hold one).
   With ``unpad=True`` (needs ``attention``), BERT-style encoders then run their Linears, GELU and LayerNorm
   on the real tokens only, and attention per sequence (:mod:`llmaccel.integrations.unpad`): a padded batch
   costs what its real tokens cost; outputs at padded positions become zero (the real tokens' are the
   padded model's).  Off by default for that reason.
4. ``compile=True``: ``model.compile(fullgraph=True)`` (``nn.Module.compile``, in place).

``filter_fn(module, fqn) -> bool`` (False keeps a Linear as it is) applies to steps 1 and 2.

With ``calibration`` (a list of model inputs: tensors, tuples, or dicts of keyword arguments for a
transformers model), the report holds the error the optimized model makes on those batches against the
original: the relative L2 error and the mean / worst cosine of the output rows (the last dim; padded tokens,
where a batch's ``attention_mask`` is 0, left out).

Errors: a model with nothing to swap (no Linear, no attention it knows) raises ``ValueError``; so does an
unsupported combination (``quantize_head`` with ``sparsity``), an unknown option, or calibration batches the model cannot run (the model's own error, with the batch index).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional

import torch
from torch import nn

from . import _swap
from .cpu import cpu_info
from .nn.attention import MultiheadAttention as LlmaccelMHA
from ._fuse_activation import fuse_activations_
from ._fuse_residual import fuse_residuals_
from ._smooth_search import choose_alpha
from .quantize import Int8Config, QuantizeSummary, _model_bytes, output_heads, quantize_
from .smoothquant import SmoothReport, smooth_
from .sparsify import SparsifySummary, SparsityConfig, sparsify_

__all__ = ["optimize", "OptimizeReport", "QUANTIZE_MODES"]

QUANTIZE_MODES = (None, "int8", "int8-weight-only")
_WHERE = "llmaccel.optimize"


@dataclass
class OptimizeReport:
    """What :func:`optimize` did (``model.llmaccel_report``); ``str()`` gives a table."""

    attention: list[str]
    quantize: Optional[QuantizeSummary]
    sparsify: Optional[SparsifySummary]
    smooth: Optional[SmoothReport]
    kernels: dict[str, str]
    bytes_before: int
    bytes_after: int
    calibration: str
    calibration_error: dict[str, float] = field(default_factory=dict)
    compiled: bool = False
    smooth_choice: str = ""   # how SmoothQuant's alpha was chosen (int8 with calibration), with the measured errors
    fused: list[str] = field(default_factory=list)  # activations and residual adds moved into Int8Linear epilogues
    head: str = ""  # what was done with the output head(s), and why (quantize_head)
    unpadded: list[str] = field(default_factory=list)  # encoders that skip padded tokens (unpad=True)

    def __str__(self) -> str:
        lines = ["llmaccel.optimize report"]
        lines.append(f"  attention : {'; '.join(self.attention) if self.attention else 'unchanged'}")
        if self.unpadded:
            lines.append(f"  unpadded  : {'; '.join(self.unpadded)} (padded tokens skipped; their outputs are 0)")
        if self.sparsify is not None:
            lines.append(f"  sparsity  : {len(self.sparsify.swapped)} Linear -> SparseLinear "
                         f"({self.sparsify.pattern}, {100 * self.sparsify.sparsity:.1f}% pruned), "
                         f"{len(self.sparsify.skipped)} kept dense")
        if self.quantize is not None:
            lines.append(f"  quantize  : {len(self.quantize.swapped)} Linear -> Int8Linear (act={self.quantize.act}), "
                         f"{len(self.quantize.skipped)} kept float")
        if self.fused:
            n_res = sum("residual" in f for f in self.fused)
            lines.append(f"  fused     : {len(self.fused) - n_res} activations and {n_res} residual adds into the "
                         f"int8 epilogue ({self.fused[0]}{', ...' if len(self.fused) > 1 else ''})")
        if self.head:
            lines.append(f"  head      : {self.head}")
        if self.smooth is not None:
            n = sum(len(v) for v in self.smooth.folded.values()) + len(self.smooth.smooth_scales)
            lines.append(f"  smooth    : SmoothQuant alpha {self.smooth.alpha} on {n} Linears")
        if self.smooth_choice:
            lines.append(f"  smoothing : {self.smooth_choice}")
        lines.append(f"  kernels   : " + ", ".join(f"{k} {v}" for k, v in self.kernels.items()))
        lines.append(f"  weights   : {self.bytes_before / 2**20:.1f} MiB -> {self.bytes_after / 2**20:.1f} MiB "
                     f"({self.bytes_after / max(self.bytes_before, 1):.2f}x)")
        lines.append(f"  calibration: {self.calibration}")
        if self.calibration_error:
            e = self.calibration_error
            lines.append(f"  error on calibration batches: relative L2 {e['relative_l2']:.3g}, cosine mean "
                         f"{e['cosine_mean']:.5f} worst {e['cosine_worst']:.5f}")
        lines.append(f"  compiled  : {'torch.compile(fullgraph=True)' if self.compiled else 'no'}")
        return "\n".join(lines)


# --------------------------------------------------------------------------
# running a model on a batch, and reading its output
# --------------------------------------------------------------------------

def _is_hf(model: nn.Module) -> bool:
    return hasattr(model, "config") and hasattr(model, "set_attn_implementation")


def _runner(model: nn.Module) -> Callable[[nn.Module, Any], Any]:
    """How a calibration batch is fed: dicts as keyword arguments to a transformers model (as the model's
    own callers do), tuples as positional arguments, anything else as the one argument."""
    hf = _is_hf(model)

    def run(m, batch):
        if isinstance(batch, dict) and hf:
            return m(**batch)
        if isinstance(batch, tuple):
            return m(*batch)
        return m(batch)

    return run


def _output_tensor(out: Any) -> torch.Tensor:
    """The tensor an output stands for: itself, a sentence-transformers ``sentence_embedding``, or a
    transformers output's ``last_hidden_state`` / ``logits``, or the first tensor of a tuple."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict) and "sentence_embedding" in out:
        return out["sentence_embedding"]
    for name in ("last_hidden_state", "logits"):
        t = getattr(out, name, None)
        if isinstance(t, torch.Tensor):
            return t
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(f"{_WHERE}: cannot find the output tensor in a {type(out).__name__}")


def _rows(out: torch.Tensor, batch: Any) -> torch.Tensor:
    """The output as rows [R, D] (last dim kept); padded tokens dropped when the batch has an
    ``attention_mask`` matching the output's leading dims (their hidden states mean nothing)."""
    mask = batch.get("attention_mask") if isinstance(batch, dict) else None
    if isinstance(mask, torch.Tensor) and out.dim() == 3 and tuple(mask.shape) == tuple(out.shape[:2]):
        return out[mask.bool()]
    return out.reshape(-1, out.shape[-1]) if out.dim() > 1 else out.reshape(1, -1)


def _outputs(model: nn.Module, batches: list, run) -> list[torch.Tensor]:
    outs = []
    with torch.inference_mode():
        for i, b in enumerate(batches):
            try:
                out = _output_tensor(run(model, b))
            except Exception as exc:  # the model's own message, with which batch it was
                raise ValueError(f"{_WHERE}: calibration batch {i} does not run through the model: "
                                 f"{type(exc).__name__}: {exc}") from exc
            outs.append(_rows(out, b).double().clone())
    return outs


def _error(ref: list[torch.Tensor], new: list[torch.Tensor]) -> dict[str, float]:
    """Relative L2 error over all rows, and the cosine of each output row to the original's."""
    num = sum(float((n - r).pow(2).sum()) for r, n in zip(ref, new))
    den = sum(float(r.pow(2).sum()) for r in ref)
    cos = torch.cat([torch.nn.functional.cosine_similarity(n, r, dim=-1) for r, n in zip(ref, new)])
    return {"relative_l2": (num / den) ** 0.5 if den > 0 else float("nan"),
            "cosine_mean": float(cos.mean()), "cosine_worst": float(cos.min())}


# --------------------------------------------------------------------------
# attention
# --------------------------------------------------------------------------

def _hf_models(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The outermost transformers models in ``model`` (itself, or e.g. a sentence-transformers module's)."""
    found = []
    for fqn, mod in model.named_modules():
        if _is_hf(mod) and not any(fqn.startswith(f + ".") or f == "" for f, _ in found):
            found.append((fqn, mod))
    return found


def _swap_attention(model: nn.Module) -> list[str]:
    done = []
    hf = _hf_models(model)
    if hf:
        from .integrations import transformers as llmaccel_hf

        name = llmaccel_hf.register()
        for fqn, mod in hf:
            mod.set_attn_implementation(name)
            done.append(f"{fqn or '<model>'} ({type(mod).__name__}): attn_implementation={name!r}")
    mhas = [(fqn, m) for fqn, m in model.named_modules() if type(m) is nn.MultiheadAttention]
    for fqn, m in mhas:
        m.__class__ = LlmaccelMHA  # same parameters, buffers, state_dict keys; only forward differs
    if mhas:
        _swap.after_swap(model, [m for _, m in mhas])
        done.append(f"{len(mhas)} nn.MultiheadAttention -> llmaccel.nn.MultiheadAttention")
    return done


# --------------------------------------------------------------------------
# optimize
# --------------------------------------------------------------------------

def _check_options(model, attention, quantize, sparsity, calibration, filter_fn, compile, quantize_head=None,
                   smooth_alpha="auto", unpad=False):
    if not isinstance(model, nn.Module):
        raise TypeError(f"{_WHERE}: model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(attention, bool):
        raise TypeError(f"{_WHERE}: attention must be True or False, got {attention!r}")
    if quantize not in QUANTIZE_MODES:
        raise ValueError(f"{_WHERE}: quantize must be one of {QUANTIZE_MODES}, got {quantize!r}")
    if sparsity is not None and not isinstance(sparsity, (str, SparsityConfig)):
        raise TypeError(f"{_WHERE}: sparsity must be None, a pattern such as '2:4', or a SparsityConfig, "
                        f"got {type(sparsity).__name__}")
    if calibration is not None and (isinstance(calibration, (torch.Tensor, dict)) or
                                    not isinstance(calibration, Iterable)):
        raise TypeError(f"{_WHERE}: calibration must be a list of model inputs (one per batch), got "
                        f"{type(calibration).__name__}")
    if filter_fn is not None and not callable(filter_fn):
        raise TypeError(f"{_WHERE}: filter_fn must be callable (module, fqn) -> bool")
    if not isinstance(compile, bool):
        raise TypeError(f"{_WHERE}: compile must be True or False, got {compile!r}")
    if not isinstance(unpad, bool):
        raise TypeError(f"{_WHERE}: unpad must be True or False, got {unpad!r}")
    if unpad and not attention:
        raise ValueError(f"{_WHERE}: unpad=True needs attention=True (llmaccel's attention function reads the "
                         f"packed sequences)")
    if unpad and compile:
        raise ValueError(f"{_WHERE}: unpad=True with compile=True is not supported (the number of real tokens "
                         f"is data-dependent: fullgraph compilation cannot trace it)")
    if not (smooth_alpha is None or smooth_alpha == "auto" or
            (isinstance(smooth_alpha, (int, float)) and not isinstance(smooth_alpha, bool)
             and 0.0 <= float(smooth_alpha) <= 1.0)):
        raise ValueError(f"{_WHERE}: smooth_alpha must be 'auto', None or a number in [0, 1], got {smooth_alpha!r}")
    if quantize_head not in (None, True, False) or (quantize_head is not None and not isinstance(quantize_head, bool)):
        raise TypeError(f"{_WHERE}: quantize_head must be None (the default policy), True or False, "
                        f"got {quantize_head!r}")
    if quantize_head is not None and quantize is None:
        raise ValueError(f"{_WHERE}: quantize_head={quantize_head} needs quantize='int8' or 'int8-weight-only'")
    if quantize_head is not None and sparsity is not None:
        raise ValueError(f"{_WHERE}: quantize_head applies to quantize without sparsity (sparsify_ keeps heads "
                         f"dense by its own rule)")


def _sparsity_config(sparsity, quantize, calibration) -> SparsityConfig:
    config = SparsityConfig(pattern=sparsity) if isinstance(sparsity, str) else sparsity
    if quantize in ("int8", "int8-weight-only") and config.quantize is None:
        config = dataclasses.replace(config, quantize="int8", act="dynamic" if quantize == "int8" else "none")
    if config.method in ("wanda", "sparsegpt") and config.calibration is None:
        if calibration is None:
            raise ValueError(f"{_WHERE}: sparsity method {config.method!r} needs calibration batches "
                             f"(calibration=...)")
        config = dataclasses.replace(config, calibration=calibration)
    return config


def _kernels(report_parts: set[str]) -> dict[str, str]:
    """The CPU variant each swapped part runs (llmaccel.cpu_info), for the report."""
    info = cpu_info()
    ops = info.get("ops", {})
    names = {"attention": "attention_forward", "int8": "int8_linear_dynamic",
             "int8-weight-only": "int8_linear_weight_only", "sparse": "sparse_nm_linear"}
    out = {}
    for part in sorted(report_parts):
        op = ops.get(names[part])
        out[part] = f"cpu {op['variant']}" if op else "torch (no C++ extension)"
    return out


def _quantize_with_head_policy(model: nn.Module, act: str, quantize_head: Optional[bool],
                               filter_fn) -> tuple[QuantizeSummary, str]:
    """``quantize_`` with the output-head policy of the module docstring; returns the summary and the
    report's ``head`` line.  One ``quantize_`` call with heads allowed, and the heads the policy keeps
    float taken out through the filter (their skip reason then says why)."""
    heads = output_heads(model)
    if quantize_head is None:
        keep = {f: ("default policy: W8A8 keeps heads float; quantize_head=True quantizes" if act == "dynamic" else
                    "default policy: tied to the embedding, an int8 copy would free nothing; quantize_head=True "
                    "quantizes") for f, (_, tied) in heads.items() if act == "dynamic" or tied}
    else:
        keep = {} if quantize_head else {f: "quantize_head=False" for f in heads}

    def allow(mod, fqn):
        return fqn not in keep and (filter_fn is None or filter_fn(mod, fqn))

    summary = quantize_(model, Int8Config(act=act, skip_output_head=False), allow)
    why_float = {}
    for f in heads:
        if f in summary.swapped:
            continue
        if f in keep and (filter_fn is None or filter_fn(dict(model.named_modules())[f], f)):
            summary.skipped[f] = f"{heads[f][0]}: kept float, {keep[f]}"
            why_float[f] = keep[f]
        else:  # the user's filter_fn, or one of quantize_'s other rules (size, int32 overflow)
            why_float[f] = summary.skipped.get(f, "kept")
    if not heads:
        return summary, "none recognized (quantize_'s rules); every Linear follows filter_fn"
    why_int8 = ("default policy: weight-only quantizes an untied head; quantize_head=False keeps it float"
                if quantize_head is None else "quantize_head=True")
    return summary, "; ".join(f"{f} float ({why_float[f]})" if f in why_float else f"{f} int8 ({why_int8})"
                              for f in heads)


def optimize(model: nn.Module, *, attention: bool = True, quantize: Optional[str] = None,
             sparsity=None, calibration: Optional[Iterable] = None,
             filter_fn: Optional[Callable[[nn.Module, str], bool]] = None, compile: bool = False,
             quantize_head: Optional[bool] = None, smooth_alpha="auto", unpad: bool = False) -> nn.Module:
    """Swap llmaccel's attention, int8 and sparse layers into ``model`` in place (module docstring); returns
    ``model``, with the :class:`OptimizeReport` at ``model.llmaccel_report``."""
    _check_options(model, attention, quantize, sparsity, calibration, filter_fn, compile, quantize_head,
                   smooth_alpha, unpad)
    batches = list(calibration) if calibration is not None else None
    run = _runner(model)
    bytes_before = _model_bytes(model)
    reference = _outputs(model, batches, run) if batches else None
    has_linear = any(isinstance(m, nn.Linear) for m in model.modules())
    if not attention and quantize is None and sparsity is None:
        raise ValueError(f"{_WHERE}: nothing to do: attention=False, quantize=None and sparsity=None")
    if (quantize is not None or sparsity is not None) and not has_linear:
        raise ValueError(f"{_WHERE}: the model has no nn.Linear to quantize or sparsify")

    parts: set[str] = set()
    sparse_summary = quant_summary = smooth_report = None
    smooth_choice = ""
    fused: list[str] = []
    head_note = ""
    if sparsity is not None:
        config = _sparsity_config(sparsity, quantize, batches)
        if config.method in ("wanda", "sparsegpt") and config.forward_fn is None:
            config = dataclasses.replace(config, forward_fn=run)
        sparse_summary = sparsify_(model, config, filter_fn)
        parts.add("sparse")
    elif quantize is not None:
        act = "dynamic" if quantize == "int8" else "weight_only"

        def apply(m: nn.Module, alpha: Optional[float]):
            smoothed = smooth_(m, batches, alpha, forward_fn=run) if alpha is not None else None
            return (smoothed, *_quantize_with_head_policy(m, act, quantize_head, filter_fn))

        alpha = None
        if quantize == "int8" and batches:
            if smooth_alpha == "auto":
                alpha, _, smooth_choice = choose_alpha(
                    model, apply, lambda m: _error(reference, _outputs(m, batches, run)), bytes_before)
            else:
                alpha = None if smooth_alpha is None else float(smooth_alpha)
                smooth_choice = ("no SmoothQuant (smooth_alpha=None)" if alpha is None
                                 else f"SmoothQuant alpha {alpha} (given)")
        smooth_report, quant_summary, head_note = apply(model, alpha)
        fused = fuse_activations_(model)  # only act="dynamic" Int8Linears qualify
        fused += fuse_residuals_(model)
        parts.add(quantize)
    done = []
    if attention:
        done = _swap_attention(model)
        if done:
            parts.add("attention")
    unpadded = []
    if unpad:
        from .integrations.unpad import enable_unpadding

        hf = _hf_models(model)
        if not hf:
            raise ValueError(f"{_WHERE}: unpad=True needs a transformers encoder model inside this "
                             f"{type(model).__name__}; there is none")
        for fqn, mod in hf:
            enable_unpadding(mod)  # ValueError naming why, for a model it cannot unpad
            unpadded.append(f"{fqn or '<model>'} ({type(mod).__name__})")
    if not parts:
        raise ValueError(f"{_WHERE}: nothing to swap in this {type(model).__name__}: no transformers model, no "
                         f"nn.MultiheadAttention, and no quantize/sparsity asked for its Linears")
    error = _error(reference, _outputs(model, batches, run)) if batches else {}
    if compile:
        model.compile(fullgraph=True)
    calib = f"{len(batches)} batches" if batches else "none"
    if smooth_report is not None:
        calib += f" (SmoothQuant alpha {smooth_report.alpha})"
    if sparse_summary is not None and config.method in ("wanda", "sparsegpt"):
        calib += " (Wanda activation norms)" if config.method == "wanda" else " (SparseGPT: the inputs' X^T X)"
    report = OptimizeReport(attention=done, quantize=quant_summary, sparsify=sparse_summary, smooth=smooth_report,
                            kernels=_kernels(parts), bytes_before=bytes_before, bytes_after=_model_bytes(model),
                            calibration=calib, calibration_error=error, compiled=compile,
                            smooth_choice=smooth_choice, fused=fused, head=head_note, unpadded=unpadded)
    model.llmaccel_report = report
    return model
