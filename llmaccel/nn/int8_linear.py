"""``Int8Linear``: a drop-in ``nn.Linear`` whose weight is stored as int8.

Storage (everything in ``state_dict`` is a plain tensor, so checkpoints load
with ``torch.load(weights_only=True)`` and safetensors, on any backend)::

    weight        int8  [out, in]   per-output-channel symmetric:  W ~= weight * weight_scale[:, None]
    weight_scale  fp32  [out]       absmax(row) / 127  (1.0 for an all-zero row)
    bias          float [out]       nn.Parameter (trainable), or absent
    smooth_scale  fp32  [in]        SmoothQuant factor s, or absent (None)

Forward::

    y = llmaccel.int8_linear(x, weight, weight_scale, bias, act=act, smooth=smooth_scale,
                             activation=activation)   # y has x's dtype

The op scales x by ``1 / smooth_scale`` itself (fp32, fused into the C++ kernel's
quantize-while-packing prologue) and applies ``activation`` (None, "gelu",
"gelu_tanh", "relu") in its fp32 epilogue: ``Int8Linear(..., activation="gelu")``
is ``nn.Sequential(Int8Linear(...), nn.GELU())`` in one pass
(:func:`llmaccel._fuse_activation.fuse_activations_` moves such pairs in).
``activation`` is structure, like ``act``: it is not in the state_dict.

``act`` is the op's mode: ``"dynamic"`` (W8A8: x is quantized per token at run
time), ``"weight_only"`` (W8A16/W8A32) or ``"auto"`` (the dispatcher picks per
call).  Gradients flow to ``x`` and ``bias`` (straight-through for the
activation quantization); the int8 weight is frozen.

SmoothQuant (Xiao et al. 2023).  A linear layer ``y = x @ W.T`` equals
``(x / s) @ (W * s).T`` for any positive per-input-channel ``s``.  Choosing
``s`` to shrink the activation channels that carry outliers and grow the
matching weight columns moves the quantization difficulty from the
activations (quantized per token, where one outlier channel wrecks the
whole token's scale) to the weights (quantized per output channel, where it
does little harm).  ``from_linear(linear, smooth_scale=s)`` quantizes
``W * s`` and keeps ``s`` in ``smooth_scale``; ``forward`` multiplies x by
``1 / s`` (in fp32, inside the op: for fp16/bf16 inputs the product is no longer
rounded to x's dtype before it is quantized).
That division is the *unfolded* form.  When the input comes straight out of
a LayerNorm, ``llmaccel.smoothquant.smooth_`` folds ``1/s`` into the norm's
weight and bias and ``s`` into the float Linear's weight instead, so the
Int8Linear made from it has no ``smooth_scale`` and pays nothing at run time.

Nested-tensor inputs (as ``nn.TransformerEncoderLayer`` passes on) run one
sequence at a time.

Dtype / device moves: ``.to(torch.bfloat16)`` / ``.half()`` convert only the
bias; ``weight`` stays int8 and the scales stay fp32 (bit for bit).
``.to(device)`` moves everything.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .._memory import streamed_tensor
from .._tensor_version import own_normal_tensors_
from ..ops.int8_linear import ACTIVATIONS, dequantize_weight, int8_linear, prepared_int8_linear

__all__ = ["Int8Linear", "quantize_weight_per_channel"]

ACT_MODES = ("dynamic", "weight_only", "auto")


def _check_activation(activation, where: str) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"{where}: activation must be one of {ACTIVATIONS}, got {activation!r}")
# Buffers whose dtype is part of the format: dtype conversions of the module
# never touch them (device moves do).
_FIXED_DTYPE = ("weight", "weight_scale", "smooth_scale")


def _check_smooth_scale(s, in_features: int, where: str) -> None:
    if not isinstance(s, Tensor):
        raise TypeError(f"{where}: smooth_scale must be a torch.Tensor, got {type(s).__name__}")
    if s.dim() != 1 or s.shape[0] != in_features:
        raise ValueError(f"{where}: smooth_scale must have shape [in_features] = [{in_features}], "
                         f"got {tuple(s.shape)}")
    if not s.is_floating_point():
        raise TypeError(f"{where}: smooth_scale must be a float tensor, got {s.dtype}")
    if s.device.type != "meta" and not bool((torch.isfinite(s) & (s > 0)).all()):
        raise ValueError(f"{where}: smooth_scale must be finite and > 0 everywhere")


def _scale_problems(t, name: str, shape: tuple, expected: str) -> list[str]:
    """What is wrong with a checkpoint's fp32 scale tensor ``name`` (absent: nothing): its type, dtype,
    shape (``expected`` describes it) and values (finite and > 0)."""
    if t is None:
        return []
    if not isinstance(t, Tensor):
        return [f"'{name}' must be a tensor, got {type(t).__name__}"]
    if t.dtype != torch.float32:
        return [f"'{name}' must be float32, got {t.dtype}"]
    if tuple(t.shape) != shape:
        return [f"'{name}' has shape {tuple(t.shape)}, expected {expected}"]
    if t.device.type != "meta" and not bool((torch.isfinite(t) & (t > 0)).all()):
        return [f"'{name}' must be finite and > 0 everywhere (found NaN, inf, zero or a negative value)"]
    return []


def quantize_weight_per_channel(weight: Tensor, smooth_scale: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Symmetric absmax int8 per output row of ``weight [out, in]`` (times ``smooth_scale`` per column).

    Returns ``(q int8 [out, in], scale fp32 [out])`` with
    ``scale = absmax / 127`` (1.0 for a zero row) and
    ``q = clamp(round_half_even(W / scale), -127, 127)``.
    """
    w = weight.detach().to(torch.float32)
    if smooth_scale is not None:
        w = w * smooth_scale.detach().to(device=w.device, dtype=torch.float32).unsqueeze(0)
    absmax = w.abs().amax(dim=1)
    scale = torch.where(absmax > 0, absmax / 127.0, torch.ones_like(absmax))
    q = torch.clamp(torch.round(w / scale.unsqueeze(1)), -127, 127).to(torch.int8)
    return q, scale


def _weight_storage(empty: Tensor) -> Tensor:
    """Where an Int8Linear keeps its int8 weight: for a CPU weight, huge pages (streamed_tensor).

    A decode step streams every weight byte from DRAM once, and the weight-only GEMV reads the weight as
    stored.  On a 2-core Zen 4 VM (same process, 2 threads, 8-16 layers beyond the L3) it streamed 1.06-1.17x
    faster from 2 MiB pages than from 4 KiB ones, as the packed weights of act="dynamic" already do
    (ops/int8_linear.py).  Other devices and meta: ``empty`` itself.
    """
    if empty.device.type != "cpu":
        return empty
    return streamed_tensor(tuple(empty.shape), empty.dtype)

class Int8Linear(nn.Module):
    """``nn.Linear`` with an int8 per-channel weight, running ``llmaccel.int8_linear`` (module docstring).

    Build one from a float layer with :meth:`from_linear`; constructing one
    directly gives a layer initialised like ``nn.Linear`` (then quantized),
    ready for ``load_state_dict``.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, act: str = "dynamic",
                 activation: str | None = None, device=None, dtype=None) -> None:
        super().__init__()
        for name, v in (("in_features", in_features), ("out_features", out_features)):
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"Int8Linear: {name} must be a positive int, got {v!r}")
        if act not in ACT_MODES:
            raise ValueError(f"Int8Linear: act must be one of {ACT_MODES}, got {act!r}")
        _check_activation(activation, "Int8Linear")
        dtype = torch.float32 if dtype is None else dtype
        if not dtype.is_floating_point:
            raise TypeError(f"Int8Linear: dtype (of the bias) must be a float dtype, got {dtype}")
        self.in_features = in_features
        self.out_features = out_features
        self.act = act
        self.activation = activation
        self.register_buffer("weight", _weight_storage(torch.empty((out_features, in_features), dtype=torch.int8,
                                                                   device=device)))
        self.register_buffer("weight_scale", torch.empty(out_features, dtype=torch.float32, device=device))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features, dtype=dtype, device=device))
        else:
            self.register_parameter("bias", None)
        self.register_buffer("smooth_scale", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise like ``nn.Linear`` (U(-1/sqrt(in), 1/sqrt(in))) and quantize; drops any smooth_scale."""
        bound = 1.0 / math.sqrt(self.in_features)
        with torch.no_grad():
            w = torch.empty(self.weight.shape, dtype=torch.float32, device=self.weight.device).uniform_(-bound, bound)
            q, s = quantize_weight_per_channel(w)
            self.weight.copy_(q)
            self.weight_scale.copy_(s)
            if self.bias is not None:
                self.bias.uniform_(-bound, bound)
        self.smooth_scale = None

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, act: str = "dynamic",
                    smooth_scale: Tensor | None = None, activation: str | None = None) -> "Int8Linear":
        """Quantize ``linear.weight`` per output channel (absmax / 127, symmetric, round half to even).

        With ``smooth_scale`` (fp32 [in_features], > 0) the quantized weight is
        ``W * smooth_scale[None, :]`` and forward multiplies x by ``1 / smooth_scale``,
        so the layer still computes ``x @ W.T + b``.  ``activation`` (None,
        "gelu", "gelu_tanh", "relu") is applied to the result.  The bias keeps its dtype
        and ``requires_grad``; the result lives on ``linear.weight``'s device.
        """
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"Int8Linear.from_linear expects an nn.Linear, got {type(linear).__name__}")
        w = linear.weight
        if w.dim() != 2:
            raise ValueError(f"Int8Linear.from_linear: weight must be 2-D, got shape {tuple(w.shape)}")
        out_features, in_features = w.shape
        if smooth_scale is not None:
            _check_smooth_scale(smooth_scale, in_features, "Int8Linear.from_linear")
        if w.device.type != "meta" and not bool(torch.isfinite(w).all()):
            raise ValueError("Int8Linear.from_linear: linear.weight contains NaN or inf")
        bias = linear.bias
        # Build on meta (no throw-away init), then materialise on the weight's device.
        mod = cls(in_features, out_features, bias=bias is not None, act=act, activation=activation, device="meta",
                  dtype=bias.dtype if bias is not None else None)
        mod = mod.to_empty(device=w.device)
        mod.weight = _weight_storage(mod.weight)
        q, s = quantize_weight_per_channel(w, smooth_scale)
        with torch.no_grad():
            mod.weight.copy_(q)
            mod.weight_scale.copy_(s)
            if bias is not None:
                mod.bias.copy_(bias.detach())
                mod.bias.requires_grad_(bias.requires_grad)
        if smooth_scale is not None:
            mod.smooth_scale = smooth_scale.detach().to(device=w.device, dtype=torch.float32).clone()
        # Built under torch.inference_mode, the tensors above would have no version counter, and every call
        # would repack the weight (llmaccel._tensor_version): keep normal tensors.
        return own_normal_tensors_(mod)

    # ------------------------------------------------------------------ compute

    def forward(self, x: Tensor, residual: Tensor | None = None) -> Tensor:
        """``y = activation(x @ W.T + b)``, plus ``residual`` (shape [..., out_features]) when given: added in
        the kernel's epilogue on the C++ path (a transformer block's skip connection without its own pass)."""
        if not isinstance(x, Tensor):
            raise TypeError(f"Int8Linear: input must be a torch.Tensor, got {type(x).__name__}")
        if x.is_nested:
            # Nested batches (what nn.TransformerEncoderLayer passes on from a nested input): each sequence
            # on its own; per-token quantization makes that the same as running the padded batch.
            if residual is None:
                return torch.nested.as_nested_tensor([self(t) for t in x.unbind()], layout=x.layout)
            return torch.nested.as_nested_tensor([self(t, r) for t, r in zip(x.unbind(), residual.unbind())],
                                                 layout=x.layout)
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"Int8Linear(in_features={self.in_features}, out_features={self.out_features}): "
                             f"the input's last dimension must be in_features={self.in_features}, "
                             f"got input of shape {tuple(x.shape)}")
        if residual is not None:
            return int8_linear(x, self.weight, self.weight_scale, self.bias, act=self.act, smooth=self.smooth_scale,
                               activation=self.activation, residual=residual)
        # Decode-sized calls: the same kernel without re-validating the weights and re-dispatching on every
        # call (llmaccel/ops/prepared.py says when it applies; None: take the public road).
        y = prepared_int8_linear(self, x)
        if y is not None:
            return y
        return int8_linear(x, self.weight, self.weight_scale, self.bias, act=self.act, smooth=self.smooth_scale,
                           activation=self.activation)

    def dequantize(self) -> Tensor:
        """The fp32 weight [out, in] this layer applies to its input: ``weight * weight_scale[:, None] * (1 / smooth_scale)``.

        ``F.linear(x, m.dequantize(), m.bias)`` (then ``m.activation``) matches
        ``m(x)`` up to the activation quantization of ``act="dynamic"``.
        """
        w = dequantize_weight(self.weight, self.weight_scale)
        if self.smooth_scale is not None:
            w = w * torch.reciprocal(self.smooth_scale).unsqueeze(0)
        return w

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"act={self.act}, smooth={self.smooth_scale is not None}"
                + (f", activation={self.activation}" if self.activation is not None else ""))

    # ------------------------------------------------------------------ dtype / device moves

    def _apply(self, fn, recurse=True):
        # .to(dtype) / .half() / .bfloat16() would turn the fp32 scales into
        # half precision (the int8 weight is safe: it is not floating point).
        # Hide the fixed-dtype buffers from nn.Module._apply, then apply fn to
        # them ourselves and keep only its device change, copying from the
        # original so no precision is lost on the way.
        held = {n: self._buffers[n] for n in _FIXED_DTYPE if self._buffers.get(n) is not None}
        for n in held:
            self._buffers[n] = None
        try:
            super()._apply(fn, recurse)
        finally:
            self._buffers.update(held)
        for n, t in held.items():
            moved = fn(t)
            if moved.dtype != t.dtype:
                moved = t.to(device=moved.device)
            self._buffers[n] = moved
        return self

    # ------------------------------------------------------------------ state_dict

    def _state_dict_problems(self, state_dict, prefix: str) -> list[str]:
        out_f, in_f = self.out_features, self.in_features
        problems = []
        w = state_dict.get(prefix + "weight")
        if w is not None:
            if not isinstance(w, Tensor):
                problems.append(f"'weight' must be a tensor, got {type(w).__name__}")
            elif w.dtype != torch.int8:
                hint = (" (this looks like an unquantized nn.Linear weight: build the layer with "
                        "Int8Linear.from_linear or llmaccel.quantize_ instead)") if w.is_floating_point() else ""
                problems.append(f"'weight' must be int8, got {w.dtype}{hint}")
            elif tuple(w.shape) != (out_f, in_f):
                problems.append(f"'weight' has shape {tuple(w.shape)}, expected [out_features, in_features] = "
                                f"[{out_f}, {in_f}]")
        problems += _scale_problems(state_dict.get(prefix + "weight_scale"), "weight_scale", (out_f,),
                                    f"one scale per output channel [{out_f}]")
        b = state_dict.get(prefix + "bias")
        if b is not None and self.bias is not None:
            if not isinstance(b, Tensor) or not b.is_floating_point():
                problems.append(f"'bias' must be a float tensor, got "
                                f"{b.dtype if isinstance(b, Tensor) else type(b).__name__}")
            elif tuple(b.shape) != (out_f,):
                problems.append(f"'bias' has shape {tuple(b.shape)}, expected [{out_f}]")
            elif b.device.type != "meta" and not bool(torch.isfinite(b).all()):
                problems.append("'bias' contains NaN or inf")
        problems += _scale_problems(state_dict.get(prefix + "smooth_scale"), "smooth_scale", (in_f,),
                                    f"[in_features] = [{in_f}]")
        return problems

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        problems = self._state_dict_problems(state_dict, prefix)
        if problems:
            where = f"Int8Linear(in_features={self.in_features}, out_features={self.out_features})"
            if prefix:
                where += f" at '{prefix.rstrip('.')}'"
            error_msgs.extend(f"{where}: {p}" for p in problems)
            return  # copy nothing into this layer: a partial load would leave it inconsistent
        if prefix + "smooth_scale" in state_dict and self.smooth_scale is None:
            # A SmoothQuant checkpoint loaded into a freshly built layer: make room for the scale.
            self.smooth_scale = torch.empty(self.in_features, dtype=torch.float32, device=self.weight.device)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
