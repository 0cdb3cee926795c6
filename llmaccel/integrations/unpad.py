"""Unpadding: a BERT-style encoder runs its per-token work on the real tokens only.

A padded batch ``[B, L]`` whose sequence ``b`` has ``n_b`` real tokens (``attention_mask[b] != 0``) holds
``T = sum_b n_b`` real tokens.  Everything in an encoder layer except attention acts on one token at a
time (the Q/K/V/output/MLP Linears, GELU, LayerNorm, residual adds; W8A8's per-token quantization too), so
those run on the packed rows ``[1, T, H]`` and do ``T / (B L)`` of the padded work: a batch of short
sentences padded to a fixed length is mostly padding (the ``llmaccel demo`` batch: 463 real tokens of
4096).  Only attention mixes tokens: it re-pads Q, K and V to ``[B, Hq, Lmax, D]`` with
``Lmax = max_b n_b`` (sequence ``b``'s tokens first, in order), runs one masked call with key ``j`` of row
``b`` kept iff ``j < n_b``, and packs its output again.  FasterTransformer ("remove padding") and torch's
nested-tensor encoder fast path do the same.

Results: every real token's output is the padded model's up to float summation order (the Linears see the
same rows; attention sees the same keys, since it is permutation-equivariant once the absolute position
embeddings are added and padded keys are masked either way).  **Padded positions' outputs are zero** (the
padded model returns values there that mean nothing; mean pooling and the [CLS] pooler never read them),
as in torch's ``nn.TransformerEncoder`` fast path.

How it is wired, with no global state (so an exception part-way leaves nothing behind):

* a forward pre-hook on the model reads its 2-D ``attention_mask`` and passes it on as the keyword
  argument ``llmaccel_padding_mask``; transformers forwards a model's extra keyword arguments to the
  encoder;
* a pre-hook on the encoder packs ``hidden_states``, drops the 4-D mask and passes a :class:`Packing` as
  ``llmaccel_packing``, which transformers forwards through every layer to the attention function;
  :func:`llmaccel.integrations.transformers.attention_forward` then attends per sequence
  (:meth:`Packing.attend`);
* a forward hook on the encoder scatters ``last_hidden_state`` back to ``[B, L, H]``.

Only while the model's attention implementation is llmaccel's (another one would not read the packing
and would attend across sentences): the encoder hook checks it on every call.  Not packed (the model runs
as it would without unpadding): no mask or no padding, cross-attention or a cache, ``output_hidden_states``
/ ``output_attentions`` (their per-layer tensors would be packed).  Models: encoder-only transformers
models with absolute position embeddings whose encoder holds its layers in ``encoder.layer`` (BERT,
RoBERTa, XLM-R, CamemBERT, ELECTRA).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

__all__ = ["Packing", "enable_unpadding", "disable_unpadding", "unpadding_enabled", "SUPPORTED_MODEL_TYPES"]

SUPPORTED_MODEL_TYPES = ("bert", "roberta", "xlm-roberta", "camembert", "electra")
_WHERE = "llmaccel unpadding"
_MASK_KW = "llmaccel_padding_mask"
_PACK_KW = "llmaccel_packing"


@dataclass
class Packing:
    """Where the real tokens of a padded ``[B, L]`` batch sit.

    ``src[t]``: token ``t``'s flat position ``b * L + l`` in the padded batch (row-major order);
    ``dst[t]``: its position ``b * Lmax + j`` in the compact ``[B, Lmax]`` grid attention uses (``j``: its
    rank among row ``b``'s real tokens); ``key_mask``: ``[B, 1, 1, Lmax]``, True where ``j < n_b``.
    """

    batch: int
    seq: int
    lmax: int
    src: Tensor
    dst: Tensor
    key_mask: Tensor

    @property
    def tokens(self) -> int:
        return int(self.src.numel())

    @staticmethod
    def from_mask(mask: Tensor) -> "Packing | None":
        """The packing of a 2-D ``attention_mask`` (non-zero = real token); None when nothing is padded."""
        valid = mask != 0
        B, L = valid.shape
        lengths = valid.sum(1)
        T = int(lengths.sum())
        if T == B * L:
            return None
        lmax = max(int(lengths.max()), 1)
        src = valid.reshape(-1).nonzero().squeeze(1)
        rank = (valid.cumsum(1) - 1).reshape(-1).index_select(0, src)
        dst = (src // L) * lmax + rank
        key_mask = (torch.arange(lmax, device=mask.device)[None, :] < lengths[:, None]).view(B, 1, 1, lmax)
        return Packing(B, L, lmax, src, dst, key_mask)

    def pack(self, hidden: Tensor) -> Tensor:
        """``[B, L, H]`` -> ``[1, T, H]`` (the real tokens' rows)."""
        return hidden.reshape(self.batch * self.seq, -1).index_select(0, self.src).unsqueeze(0)

    def unpack(self, packed: Tensor) -> Tensor:
        """``[1, T, H]`` -> ``[B, L, H]``, zero at padded positions."""
        H = packed.shape[-1]
        out = packed.new_zeros(self.batch * self.seq, H).index_copy(0, self.src, packed.reshape(-1, H))
        return out.view(self.batch, self.seq, H)

    def _grid(self, x: Tensor) -> Tensor:
        """``[1, Hx, T, D]`` -> ``[B, Hx, Lmax, D]`` (a strided view of a ``[B, Lmax, Hx, D]`` buffer, zero
        rows where a sequence is shorter than ``Lmax``)."""
        _, h, T, D = x.shape
        rows = x[0].transpose(0, 1)  # [T, Hx, D]
        grid = rows.new_zeros(self.batch * self.lmax, h, D).index_copy(0, self.dst, rows)
        return grid.view(self.batch, self.lmax, h, D).transpose(1, 2)

    def attend(self, query: Tensor, key: Tensor, value: Tensor,
               attend_fn: Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]) -> Tensor:
        """Attention over packed ``q [1, Hq, T, D]``, ``k/v [1, Hkv, T, D]``: each sequence attends to its
        own real tokens.  ``attend_fn(q, k, v, mask)`` is the masked attention on ``[B, H, Lmax, D]``.
        Returns ``[1, T, Hq, Dv]`` (transformers' attention-function output layout)."""
        T = self.tokens
        for name, t in (("query", query), ("key", key), ("value", value)):
            if t.dim() != 4 or t.shape[0] != 1 or t.shape[2] != T:
                raise ValueError(f"{_WHERE}: {name} of shape {tuple(t.shape)} is not the packed [1, H, {T}, D] "
                                 f"this batch's {T} real tokens give (cross-attention cannot be unpadded)")
        out = attend_fn(self._grid(query), self._grid(key), self._grid(value), self.key_mask)  # [B, Hq, Lmax, Dv]
        Hq, Dv = out.shape[1], out.shape[3]
        return out.transpose(1, 2).reshape(self.batch * self.lmax, Hq, Dv).index_select(0, self.dst).unsqueeze(0)


# --------------------------------------------------------------------------
# the hooks
# --------------------------------------------------------------------------

def _model_pre_hook(model: nn.Module, args: tuple, kwargs: dict):
    """Pass the 2-D padding mask on to the encoder (as a keyword argument the model forwards)."""
    mask = kwargs.get("attention_mask")
    if mask is None and len(args) > 1:  # forward(input_ids, attention_mask, ...)
        mask = args[1]
    if (not isinstance(mask, Tensor) or mask.dim() != 2 or kwargs.get("output_hidden_states")
            or kwargs.get("output_attentions") or kwargs.get("past_key_values") is not None
            or kwargs.get("encoder_hidden_states") is not None):
        return None
    return args, {**kwargs, _MASK_KW: mask}


def _encoder_pre_hook(encoder: nn.Module, args: tuple, kwargs: dict):
    mask = kwargs.pop(_MASK_KW, None)
    hidden = args[0] if args else kwargs.get("hidden_states")
    packing = None
    if (mask is not None and isinstance(hidden, Tensor) and hidden.dim() == 3
            and tuple(mask.shape) == tuple(hidden.shape[:2])
            and getattr(getattr(encoder, "config", None), "_attn_implementation", None) == _attn_name()
            and kwargs.get("encoder_hidden_states") is None and (len(args) < 3 or args[2] is None)):
        packing = Packing.from_mask(mask)
    if packing is None:
        return args, kwargs
    packed = packing.pack(hidden)
    if args:
        args = (packed, *args[1:])
    else:
        kwargs["hidden_states"] = packed
    if len(args) > 1:
        args = (args[0], None, *args[2:])
    else:
        kwargs["attention_mask"] = None
    kwargs[_PACK_KW] = packing
    return args, kwargs


def _encoder_hook(encoder: nn.Module, args: tuple, kwargs: dict, output):
    packing = kwargs.get(_PACK_KW)
    if packing is None:
        return None
    if isinstance(output, tuple):
        return (packing.unpack(output[0]), *output[1:])
    output.last_hidden_state = packing.unpack(output.last_hidden_state)
    return output


def _attn_name() -> str:
    from .transformers import NAME

    return NAME


# --------------------------------------------------------------------------
# enabling
# --------------------------------------------------------------------------

def _why_not(model: nn.Module) -> str:
    """Empty when ``model`` can be unpadded, else why not."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(model, "set_attn_implementation"):
        return f"{type(model).__name__} is not a transformers model"
    mtype = getattr(config, "model_type", None)
    if mtype not in SUPPORTED_MODEL_TYPES:
        return f"model_type {mtype!r} is not one of {SUPPORTED_MODEL_TYPES}"
    if getattr(config, "is_decoder", False) or getattr(config, "is_encoder_decoder", False):
        return "a decoder (causal or cross-attending) cannot be unpadded this way"
    if getattr(config, "position_embedding_type", "absolute") not in (None, "absolute"):
        return f"position_embedding_type {config.position_embedding_type!r} is relative (not token-local)"
    encoder = getattr(model, "encoder", None)
    if encoder is None or not isinstance(getattr(encoder, "layer", None), nn.ModuleList):
        return "no encoder.layer ModuleList"
    for fn in (model.forward, encoder.forward):
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(fn).parameters.values()):
            return f"{fn.__qualname__} does not forward keyword arguments to the attention function"
    return ""


def unpadding_enabled(model: nn.Module) -> bool:
    return _model_pre_hook in model._forward_pre_hooks.values()


def enable_unpadding(model: nn.Module) -> None:
    """Install the unpadding hooks on a transformers encoder model (module docstring).  Idempotent.
    Raises ValueError naming the reason when ``model`` cannot be unpadded, and when its attention
    implementation is not llmaccel's (``llmaccel.optimize(model, attention=True)`` sets it)."""
    why = _why_not(model)
    if why:
        raise ValueError(f"{_WHERE}: cannot unpad this {type(model).__name__}: {why}")
    if model.config._attn_implementation != _attn_name():
        raise ValueError(f"{_WHERE}: needs attn_implementation={_attn_name()!r} (the packing is read by llmaccel's "
                         f"attention function), the model has {model.config._attn_implementation!r}")
    if unpadding_enabled(model):
        return
    # The hooks are module-level functions, found again by identity (no handles kept: a deep copy of the
    # model carries the hooks in its own dicts, and handles would still point at the original's).
    model.register_forward_pre_hook(_model_pre_hook, with_kwargs=True)
    model.encoder.register_forward_pre_hook(_encoder_pre_hook, with_kwargs=True)
    model.encoder.register_forward_hook(_encoder_hook, with_kwargs=True)


def _remove(hooks: dict, kw_flags: dict, fn) -> None:
    for hid in [h for h, f in hooks.items() if f is fn]:
        del hooks[hid]
        kw_flags.pop(hid, None)


def disable_unpadding(model: nn.Module) -> None:
    """Remove what :func:`enable_unpadding` installed (nothing happens if it was not)."""
    _remove(model._forward_pre_hooks, model._forward_pre_hooks_with_kwargs, _model_pre_hook)
    encoder = getattr(model, "encoder", None)
    if isinstance(encoder, nn.Module):
        _remove(encoder._forward_pre_hooks, encoder._forward_pre_hooks_with_kwargs, _encoder_pre_hook)
        _remove(encoder._forward_hooks, encoder._forward_hooks_with_kwargs, _encoder_hook)
