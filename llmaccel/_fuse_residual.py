"""``fuse_residuals_``: move a transformer block's skip connection into the int8 epilogue.

A BERT block ends each half with ``LayerNorm(dropout(dense(h)) + h_in)`` (transformers' ``BertSelfOutput``
after attention, ``BertOutput`` after the MLP).  Unfused, the add is its own pass over ``[tokens, hidden]``:
read two fp32 tensors, write one, after the GEMM has already written ``dense(h)`` once.  ``int8_linear(...,
residual=h_in)`` adds ``h_in`` in the C++ kernel's epilogue while each output tile is still in registers
(``y = dense(h) + h_in``, one fp32 rounding, bit-identical to the unfused add), so that pass disappears.

The pass replaces such a module by :class:`DenseAddNorm`, which holds the very same children under the
same names (``dense``, ``LayerNorm``, ``dropout``: state_dict keys unchanged) and computes
``LayerNorm(dense(h, residual=h_in))``.  Only where it can prove the module computes exactly that:

* its class's ``forward`` is ``BertSelfOutput.forward`` / ``BertOutput.forward`` (or the same bytecode and
  names, as the "Copied from" classes RobertaSelfOutput, ElectraOutput, ... have);
* ``dense`` is an :class:`~llmaccel.nn.Int8Linear` with ``act="dynamic"`` (the fused C++ path) used only
  here, ``dropout`` an ``nn.Dropout``, and no module of the three (nor the block) has hooks (a hook would
  see a different value).

Dropout acts between the Linear and the add, so in training mode with ``p > 0`` :class:`DenseAddNorm`
runs the unfused form (dropout, then the add): fine-tuning is unchanged.
"""

from __future__ import annotations

from torch import Tensor, nn

from ._fuse_activation import same_forward
from .nn.int8_linear import Int8Linear

__all__ = ["DenseAddNorm", "fuse_residuals_"]


class DenseAddNorm(nn.Module):
    """``LayerNorm(dropout(dense(hidden_states)) + input_tensor)`` with the add in ``dense``'s epilogue.

    Shapes: ``hidden_states`` [..., dense.in_features], ``input_tensor`` [..., dense.out_features] -> the
    same as ``input_tensor``.  Drop-in for transformers' ``BertSelfOutput`` / ``BertOutput`` (same
    children, same call signature)."""

    def __init__(self, dense: Int8Linear, layer_norm: nn.Module, dropout: nn.Module):
        super().__init__()
        self.dense = dense
        self.LayerNorm = layer_norm
        self.dropout = dropout

    def forward(self, hidden_states: Tensor, input_tensor: Tensor) -> Tensor:
        if self.training and self.dropout.p > 0:
            return self.LayerNorm(self.dropout(self.dense(hidden_states)) + input_tensor)
        return self.LayerNorm(self.dense(hidden_states, residual=input_tensor))


def _bert_output_forwards():
    try:
        from transformers.models.bert.modeling_bert import BertOutput, BertSelfOutput
    except ImportError:
        return ()
    return (BertSelfOutput.forward, BertOutput.forward)


def _hooked(*mods) -> bool:
    return any(m._forward_hooks or m._forward_pre_hooks for m in mods)


def fuse_residuals_(model: nn.Module) -> list[str]:
    """Replace every provable BERT-style ``dense -> dropout -> LayerNorm(+ residual)`` module of ``model`` by
    :class:`DenseAddNorm` in place (module docstring).  Returns one line per fusion."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"llmaccel.fuse_residuals_: model must be an nn.Module, got {type(model).__name__}")
    refs = _bert_output_forwards()
    if not refs:
        return []
    # A module reachable under two names is used twice: its other use must not change.
    uses: dict[int, int] = {}
    for _, m in model.named_modules(remove_duplicate=False):
        uses[id(m)] = uses.get(id(m), 0) + 1
    done = []
    for parent_name, parent in list(model.named_modules()):
        for child_name, mod in list(parent._modules.items()):
            if mod is None or type(mod) is DenseAddNorm:
                continue
            if not any(same_forward(mod, ref) for ref in refs):
                continue
            dense, norm, drop = (getattr(mod, n, None) for n in ("dense", "LayerNorm", "dropout"))
            if not (type(dense) is Int8Linear and dense.act == "dynamic" and isinstance(drop, nn.Dropout)
                    and isinstance(norm, nn.Module)):
                continue
            if _hooked(mod, dense, norm, drop) or uses[id(mod)] != 1 or uses[id(dense)] != 1:
                continue
            fused = DenseAddNorm(dense, norm, drop)
            fused.train(mod.training)
            parent._modules[child_name] = fused
            where = f"{parent_name}.{child_name}" if parent_name else child_name
            done.append(f"{where}: dense + residual add -> residual epilogue ({type(mod).__name__})")
    return done
