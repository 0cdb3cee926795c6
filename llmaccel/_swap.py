"""Keep PyTorch's fused inference paths away from layers whose submodules a model-level call replaced.

``quantize_`` (and any later call that swaps ``nn.Linear`` layers for
modules of ours) changes what a layer's ``linear1.weight`` is: an int8
buffer instead of a float Parameter.  Three torch modules have an inference
"fast path" that reads those weights directly instead of calling the
submodules, so it either crashes (``self and mat2 must have the same dtype,
but got Float and Char``) or silently skips the replacement:

* ``nn.TransformerEncoderLayer.forward`` runs ``torch._transformer_encoder_layer_fwd``
  in eval mode when grad is off (``no_grad``/``inference_mode``) or no weight
  requires grad.  Its own list of reasons not to (``why_not_sparsity_fast_path``
  in torch/nn/modules/transformer.py) includes *forward hooks or pre-hooks on
  the layer or any submodule*: hooks must run, so the fused kernel is never
  used for such a layer.  :func:`after_swap` registers one no-op forward
  pre-hook, :func:`keep_off_fastpath`, on every such layer that holds a
  replaced module.  (The other per-instance conditions -- batch_first, bias,
  activation, norm eps, odd heads -- change what the layer computes or are
  private flags.)  The hook is a module-level function, so the model still
  pickles and deep-copies.
* ``nn.TransformerEncoder.forward`` turns a padded batch plus
  ``src_key_padding_mask`` into a nested tensor for its layers in the same
  conditions (checking only its *first* layer).  :func:`after_swap` sets its
  ``use_nested_tensor`` (the flag torch sets in ``__init__`` for layers it
  cannot run that way) to False when any of its layers holds a replaced module.
  Outputs at padded positions are then what the layers compute there instead
  of zeros; they are meaningless either way (torch's own grad-mode path gives
  non-zero values there too).
* ``nn.MultiheadAttention.forward`` reads ``out_proj.weight`` on its fast
  path *and* on its slow path (``F.multi_head_attention_forward``).  An MHA
  whose ``out_proj`` was replaced is turned into :class:`llmaccel.nn.MultiheadAttention`
  in place (``__class__`` swap: same parameters, buffers, state_dict keys,
  config; only ``forward`` differs, and it calls ``self.out_proj(...)``).
  ``quantize_`` keeps ``out_proj`` in float today, so it never needs this;
  the helper handles it for any call that does swap it.

``nn.TransformerDecoderLayer`` / ``nn.TransformerDecoder`` have no fused
path of their own in torch 2.13 (their attention modules' fast paths only
read the attention's own weights), so nothing is needed for them.
"""

from __future__ import annotations

from typing import Iterable

from torch import nn

__all__ = ["after_swap", "keep_off_fastpath"]


def keep_off_fastpath(module, args):
    """Forward pre-hook that does nothing: its presence makes ``nn.TransformerEncoderLayer`` take its
    module-by-module path, which calls the replaced submodules (see the module docstring)."""
    return None


def _has_guard(layer: nn.Module) -> bool:
    return any(h is keep_off_fastpath for h in layer._forward_pre_hooks.values())


def after_swap(model: nn.Module, replaced: Iterable[nn.Module]) -> list[str]:
    """Make ``model`` correct in train, eval, ``no_grad`` and ``inference_mode`` after the modules in
    ``replaced`` (the new ones, already in place) were put where torch modules used to be.

    Idempotent.  Returns one line per module it changed (fqn and what), for the caller's summary.
    """
    from .nn.attention import MultiheadAttention as LlmaccelMHA

    replaced_ids = {id(m) for m in replaced}
    if not replaced_ids:
        return []

    def holds_replaced(mod: nn.Module) -> bool:
        return any(id(m) in replaced_ids for m in mod.modules())

    changes = []
    for fqn, mod in model.named_modules():
        where = fqn or "<model>"
        if isinstance(mod, nn.MultiheadAttention) and not isinstance(mod, LlmaccelMHA) \
                and holds_replaced(mod.out_proj):
            if type(mod) is not nn.MultiheadAttention:
                raise TypeError(f"{where}: the out_proj of {type(mod).__name__} (a subclass of "
                                f"nn.MultiheadAttention) was replaced, and its forward may read out_proj.weight "
                                f"directly; keep that out_proj in floating point (filter_fn)")
            mod.__class__ = LlmaccelMHA
            changes.append(f"{where}: nn.MultiheadAttention -> llmaccel.nn.MultiheadAttention (its out_proj "
                           f"was replaced)")
    for fqn, mod in model.named_modules():
        where = fqn or "<model>"
        if isinstance(mod, nn.TransformerEncoderLayer) and holds_replaced(mod) and not _has_guard(mod):
            mod.register_forward_pre_hook(keep_off_fastpath)
            changes.append(f"{where}: torch's fused encoder-layer inference path kept off")
        elif isinstance(mod, nn.TransformerEncoder) and getattr(mod, "use_nested_tensor", False) \
                and holds_replaced(mod):
            mod.use_nested_tensor = False
            changes.append(f"{where}: nested-tensor conversion of padded batches turned off")
    return changes
