"""``SparseLinear``: a drop-in ``nn.Linear`` whose weight is pruned and stored in a compressed format.

Storage: the format's own fields (``llmaccel.sparsity``), plus the bias.  Everything in ``state_dict`` is
a plain tensor (checkpoints load with ``torch.load(weights_only=True)`` and safetensors)::

    pattern "N:M"           values [out, G*n] (float Parameter, or int8), indices uint8, pattern, shape, [scale]
    pattern "unstructured"  bitmap uint8, values [nnz], row_offsets int64, shape, [scale]
    pattern "block"         values [nnzb, bh, bw], col_indices int32, crow_indices int64, shape, block_size, [scale]
    bias                    float [out] Parameter, or absent

Forward (the math lives in the op; ``W = to_dense()``, the pruned weight)::

    y = llmaccel.sparse_linear(x, <the fields>, bias, act=act) = x @ W.T + bias

``act`` (structure, like ``Int8Linear``'s: not in the state_dict): ``"none"`` keeps x in floating point;
``"dynamic"`` (int8 formats, ``quantize="int8"``) quantizes x per token and multiplies int8 by int8
(W8A8, the op's module docstring): for 2:4 at decode the C++ kernel streams 0.63 bytes per weight.

Fine-tuning: float ``values`` are an ``nn.Parameter`` (``requires_grad`` as the source Linear's weight had);
their gradient exists only at kept positions, so optimizer steps keep every pruned weight exactly zero.
int8 values are frozen buffers.  ``load_state_dict`` rebuilds the format from the state and checks every
field (``NMPackedWeight.from_state_dict`` ...) and the layer's shape *before* anything is copied: a corrupt
or mismatched checkpoint raises and leaves the layer as it was.  A bitmap / BSR checkpoint may keep a different
number of weights than the layer: loading then replaces the tensors (``values`` becomes a new Parameter, so
build optimizers after loading).

Dtype moves (``.half()``...) convert ``values`` and the bias, never the fp32 ``scale`` (int8 formats).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

from .._tensor_version import own_normal_tensors_
from ..ops.prepared import call_prepared
from ..ops.sparse_linear import ACT_MODES, sparse_linear
from ..ops.sparse_linear import _op as _sparse_op
from ..ops.sparse_linear_layouts import fields_of
from ..sparsity import BitmapWeight, BSRWeight, NMPackedWeight, prune, sparsegpt_prune

__all__ = ["SparseLinear"]

# layout -> (format class, field names its state_dict holds, optional ones)
_FORMATS = {
    "nm": (NMPackedWeight, ("values", "indices", "pattern", "shape")),
    "bitmap": (BitmapWeight, ("bitmap", "values", "row_offsets", "shape")),
    "bsr": (BSRWeight, ("values", "col_indices", "crow_indices", "shape", "block_size")),
}
_OPTIONAL = ("scale",)


def _layout_of_keys(keys) -> Optional[str]:
    if "pattern" in keys:
        return "nm"
    if "bitmap" in keys:
        return "bitmap"
    if "block_size" in keys or "col_indices" in keys:
        return "bsr"
    return None


def _layout_of(weight) -> str:
    return {NMPackedWeight: "nm", BitmapWeight: "bitmap", BSRWeight: "bsr"}[type(weight)]


def _describe(weight) -> str:
    if isinstance(weight, NMPackedWeight):
        return f"pattern={weight.n}:{weight.m}"
    if isinstance(weight, BitmapWeight):
        return "pattern=unstructured"
    return f"pattern=block, block_size={weight.block_size}"


def _check_act(act, quantize, where: str) -> None:
    if act not in ACT_MODES:
        raise ValueError(f"{where}: act must be one of {ACT_MODES}, got {act!r}")
    if act == "dynamic" and quantize != "int8":
        raise ValueError(f"{where}: act='dynamic' (int8 activations) needs quantize='int8', got quantize={quantize!r}")


def pack(weight: Tensor, pattern: str = "2:4", *, sparsity=None, block_size=(32, 32), method="magnitude",
         quantize=None, activation_norms=None, activation_gram=None):
    """``prune`` ``weight`` and pack it in the format its pattern calls for (N:M, bitmap, BSR).
    ``method="sparsegpt"`` (N:M only, with ``activation_gram = X^T X``): the mask and the corrected kept
    weights of ``sparsegpt_prune``."""
    if method == "sparsegpt":
        if pattern in ("unstructured", "block"):
            raise ValueError(f"SparseLinear: method='sparsegpt' takes an N:M pattern, got {pattern!r}")
        if activation_gram is None:
            raise ValueError("SparseLinear: method='sparsegpt' needs activation_gram (X^T X of the layer's inputs, "
                             "from llmaccel.sparsity.calibrate(..., gram=True))")
        if activation_norms is not None:
            raise ValueError("SparseLinear: activation_norms is Wanda's; method='sparsegpt' takes activation_gram")
        corrected, mask = sparsegpt_prune(weight, activation_gram, pattern)
        return NMPackedWeight.from_dense(corrected, mask, pattern, quantize=quantize)
    if activation_gram is not None:
        raise ValueError(f"SparseLinear: activation_gram is only used by method='sparsegpt', got method={method!r}")
    mask = prune(weight, pattern, sparsity=sparsity, block_size=block_size, method=method,
                 activation_norms=activation_norms)
    if pattern == "unstructured":
        return BitmapWeight.from_dense(weight, mask, quantize=quantize)
    if pattern == "block":
        return BSRWeight.from_dense(weight, mask, tuple(block_size), quantize=quantize)
    return NMPackedWeight.from_dense(weight, mask, pattern, quantize=quantize)


class SparseLinear(nn.Module):
    """``nn.Linear`` with a pruned, compressed weight, running ``llmaccel.sparse_linear`` (module docstring).

    Build one from a float layer with :meth:`from_linear`; constructing one directly gives a layer
    initialised like ``nn.Linear`` and pruned by magnitude, ready for ``load_state_dict``.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, pattern: str = "2:4",
                 sparsity: Optional[float] = None, block_size=(32, 32), quantize: Optional[str] = None,
                 act: str = "none", device=None, dtype=None) -> None:
        super().__init__()
        _check_act(act, quantize, "SparseLinear")
        self.act = act
        for name, v in (("in_features", in_features), ("out_features", out_features)):
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"SparseLinear: {name} must be a positive int, got {v!r}")
        bound = 1.0 / math.sqrt(in_features)
        dtype = torch.float32 if dtype is None else dtype
        w = torch.empty((out_features, in_features), dtype=dtype, device=device).uniform_(-bound, bound)
        b = torch.empty(out_features, dtype=dtype, device=device).uniform_(-bound, bound) if bias else None
        self._init(pack(w, pattern, sparsity=sparsity, block_size=block_size, quantize=quantize), b, True)

    def _init(self, weight, bias: Optional[Tensor], trainable: bool) -> None:
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        self._field_names: list[str] = []
        self._set_weight(weight, trainable)
        if bias is not None:
            self.bias = nn.Parameter(bias.detach().clone(), requires_grad=bias.requires_grad)
            own_normal_tensors_(self)
        else:
            self.register_parameter("bias", None)

    def _set_weight(self, weight, trainable: bool) -> None:
        for name in self._field_names:
            delattr(self, name)
        state = weight.state_dict()
        for name, t in state.items():
            if name == "values" and t.is_floating_point():
                self.values = nn.Parameter(t.detach().clone(), requires_grad=trainable)
            else:
                self.register_buffer(name, t.detach().clone())
        self._field_names = list(state)
        own_normal_tensors_(self)  # built under torch.inference_mode: keep tensors with version counters
        self.layout = _layout_of(weight)
        self._meta = fields_of(weight)[5]
        self._description = _describe(weight)

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_linear(cls, linear: nn.Linear, pattern: str = "2:4", *, sparsity: Optional[float] = None,
                    block_size=(32, 32), method: str = "magnitude", quantize: Optional[str] = None,
                    activation_norms: Optional[Tensor] = None, act: str = "none",
                    activation_gram: Optional[Tensor] = None) -> "SparseLinear":
        """Prune ``linear.weight`` (``llmaccel.sparsity.prune``: ``pattern`` ``"N:M"``, ``"unstructured"``
        or ``"block"``; ``method`` ``"magnitude"`` or ``"wanda"`` with ``activation_norms``) and pack it
        (N:M packed, bitmap, BSR; ``quantize="int8"``: int8 values with per-output-channel scales;
        ``act="dynamic"`` with it: x quantized per token too, int8 x int8).  ``method="sparsegpt"`` with
        ``activation_gram`` (``X^T X`` of the layer's calibration inputs): N:M pruning that also corrects the
        kept weights (``llmaccel.sparsity.sparsegpt_prune``).

        N:M with K not a multiple of M pads the last group (documented in ``NMPackedWeight``); block tiles at
        the edges are padded likewise (``BSRWeight``).  The bias is copied with its ``requires_grad``.
        """
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"SparseLinear.from_linear expects an nn.Linear, got {type(linear).__name__}")
        _check_act(act, quantize, "SparseLinear.from_linear")
        weight = pack(linear.weight, pattern, sparsity=sparsity, block_size=block_size, method=method,
                      quantize=quantize, activation_norms=activation_norms, activation_gram=activation_gram)
        mod = cls.__new__(cls)
        nn.Module.__init__(mod)
        mod.act = act
        mod._init(weight, linear.bias, linear.weight.requires_grad)
        return mod

    # ------------------------------------------------------------------ the weight

    def _fields(self):
        g = self._buffers.get
        if self.layout == "nm":
            return self.values, self.indices, None, g("scale"), "nm", self._meta
        if self.layout == "bitmap":
            return self.values, self.bitmap, self.row_offsets, g("scale"), "bitmap", self._meta
        return self.values, self.col_indices, self.crow_indices, g("scale"), "bsr", self._meta

    def weight_format(self):
        """The weight as its ``llmaccel.sparsity`` format object (a snapshot of the current values)."""
        cls = _FORMATS[self.layout][0]
        return cls.from_state_dict({n: getattr(self, n).detach() for n in self._field_names})

    def to_dense(self) -> Tensor:
        """The pruned dense weight ``[out, in]`` this layer applies (int8 formats: ``q * scale``, fp32)."""
        return self.weight_format().to_dense()

    def weight_bytes(self) -> int:
        """Bytes of the compressed weight a kernel streams (values, index, offsets, scale; no bias)."""
        return self.weight_format().nbytes()

    def sparsity(self) -> float:
        """Fraction of zeros in :meth:`to_dense`."""
        dense = self.to_dense()
        return 1.0 - int(torch.count_nonzero(dense)) / dense.numel()

    # ------------------------------------------------------------------ compute

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor):
            raise TypeError(f"SparseLinear: input must be a torch.Tensor, got {type(x).__name__}")
        if x.is_nested:
            return torch.nested.as_nested_tensor([self(t) for t in x.unbind()], layout=x.layout)
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"SparseLinear(in_features={self.in_features}, out_features={self.out_features}): "
                             f"the input's last dimension must be in_features={self.in_features}, "
                             f"got input of shape {tuple(x.shape)}")
        fixed = (*self._fields(), self.bias, self.act)
        # Decode-sized calls skip re-validating the weight and re-dispatching (llmaccel/ops/prepared.py).
        y = call_prepared(self, _sparse_op, fixed, self.in_features, x)
        return y if y is not None else sparse_linear(x, *fixed)

    def extra_repr(self) -> str:
        quant = "int8" if "scale" in self._field_names else "none"
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"{self._description}, quantize={quant}" + (f", act={self.act}" if self.act != "none" else ""))

    # ------------------------------------------------------------------ dtype / device moves

    def _apply(self, fn, recurse=True):
        scale = self._buffers.get("scale")
        if scale is not None:
            self._buffers["scale"] = None
        try:
            super()._apply(fn, recurse)
        finally:
            if scale is not None:
                self._buffers["scale"] = scale
        if scale is not None:
            moved = fn(scale)
            self._buffers["scale"] = moved if moved.dtype == scale.dtype else scale.to(device=moved.device)
        return self

    # ------------------------------------------------------------------ state_dict

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        where = f"SparseLinear(in_features={self.in_features}, out_features={self.out_features})"
        if prefix:
            where += f" at '{prefix.rstrip('.')}'"
        mine = {k[len(prefix):]: v for k, v in state_dict.items()
                if k.startswith(prefix) and "." not in k[len(prefix):]}
        layout = _layout_of_keys(mine) or self.layout
        cls, required = _FORMATS[layout]
        missing = [prefix + k for k in required if k not in mine]
        if self.bias is not None and "bias" not in mine:
            missing.append(prefix + "bias")
        extra = [prefix + k for k in mine if k not in required + _OPTIONAL + ("bias",)]
        missing_keys.extend(missing)
        unexpected_keys.extend(extra)
        if missing:
            return
        if layout != self.layout:
            error_msgs.append(f"{where}: the checkpoint holds a {layout!r} weight, this layer a {self.layout!r} one "
                              f"({self._description}); build the layer with the checkpoint's pattern")
            return
        try:
            weight = cls.from_state_dict({k: mine[k] for k in required + _OPTIONAL if k in mine})
        except (ValueError, TypeError) as exc:
            error_msgs.append(f"{where}: {exc}")
            return
        if weight.shape != (self.out_features, self.in_features):
            error_msgs.append(f"{where}: the checkpoint's weight has shape {weight.shape}, expected [out_features, "
                              f"in_features] = [{self.out_features}, {self.in_features}]")
            return
        b = mine.get("bias")
        if self.bias is not None:
            if not isinstance(b, Tensor) or not b.is_floating_point() or tuple(b.shape) != (self.out_features,):
                error_msgs.append(f"{where}: 'bias' must be a float tensor of shape [{self.out_features}], got "
                                  f"{tuple(b.shape) if isinstance(b, Tensor) else type(b).__name__}")
                return
            if not bool(torch.isfinite(b).all()):
                error_msgs.append(f"{where}: 'bias' contains NaN or inf")
                return
        elif b is not None:
            unexpected_keys.append(prefix + "bias")
        device = self.values.device
        trainable = isinstance(self.values, nn.Parameter) and self.values.requires_grad
        values_dtype = self.values.dtype
        state = {k: v.to(device) for k, v in weight.state_dict().items()}
        if state["values"].is_floating_point():
            state["values"] = state["values"].to(values_dtype if values_dtype.is_floating_point else torch.float32)
        self._set_weight(cls.from_state_dict(state), trainable)
        if self.bias is not None:
            with torch.no_grad():
                self.bias.copy_(b)
