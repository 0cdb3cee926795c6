"""``fuse_activations_``: move an activation that directly follows an ``Int8Linear`` into its epilogue.

``int8_linear(..., activation=a)`` applies ``a`` to the fp32 result inside the
C++ kernel's epilogue (csrc/activation.h), so the separate elementwise pass
over the [M, N] output (and its write and re-read) disappears.  In BERT this
is the GELU after every ``BertIntermediate.dense`` (M x 4H, the widest
activation of the layer).

The pass changes a model only where it can prove the pair is exactly
``act(linear(x))`` with nothing else reading the Linear's output:

* a transformers ``BertIntermediate``-style module: its class's ``forward``
  is ``BertIntermediate.forward`` (or the same bytecode and names, as the
  "Copied from" classes RobertaIntermediate, ... have), so it computes
  ``intermediate_act_fn(dense(h))``;
* consecutive children ``(Int8Linear, activation)`` of an ``nn.Sequential``
  (exact type: a subclass may override ``forward``).

and only for an ``Int8Linear`` with ``act="dynamic"`` (the fused C++ path)
whose ``activation`` is None, with no forward hooks on either module (a hook
would see a different value).  Recognized activations (exact types, so a
subclass with other math is left alone):

================================================  ===============
``nn.GELU()``, transformers ``GELUActivation``    ``"gelu"`` (erf)
``nn.GELU(approximate="tanh")``, ``GELUTanh``,    ``"gelu_tanh"``
``NewGELUActivation``, ``PytorchGELUTanh``
``nn.ReLU``                                       ``"relu"``
================================================  ===============

The activation module is replaced by ``nn.Identity`` (for a BertIntermediate:
its ``intermediate_act_fn``), so the model's structure and state_dict keys are
unchanged (none of these modules holds state).  The fused model computes the
same int8 codes as the unfused one; only the activation's fp32 evaluation
differs (within ~1e-7 relative, csrc/activation.h).
"""

from __future__ import annotations

import functools

import torch.nn.functional as F
from torch import nn

from .nn.int8_linear import Int8Linear

__all__ = ["fuse_activations_"]


def _transformers_activations():
    try:
        from transformers import activations
    except ImportError:
        return None
    return activations


def _bert_intermediate_forward():
    try:
        from transformers.models.bert.modeling_bert import BertIntermediate
    except ImportError:
        return None
    return BertIntermediate.forward


def activation_name(mod) -> str | None:
    """The int8_linear ``activation`` that computes exactly what module ``mod`` does, or None."""
    if not isinstance(mod, nn.Module) or mod._forward_hooks or mod._forward_pre_hooks:
        return None
    t = type(mod)
    if t is nn.GELU:
        return {"none": "gelu", "tanh": "gelu_tanh"}.get(mod.approximate)
    if t is nn.ReLU:
        return "relu"
    acts = _transformers_activations()
    if acts is None:
        return None
    if t is getattr(acts, "GELUActivation", None):
        # F.gelu, or its Python erf formula (use_gelu_python=True): the same function.
        fn = getattr(mod, "act", None)
        if fn is F.gelu or getattr(fn, "__func__", None) is getattr(t, "_gelu_python", object()):
            return "gelu"
        return None
    if t is getattr(acts, "NewGELUActivation", None):
        return "gelu_tanh"
    for name in ("GELUTanh", "PytorchGELUTanh"):
        if t is getattr(acts, name, None):
            fn = getattr(mod, "act", None)
            if isinstance(fn, functools.partial) and fn.func is F.gelu and fn.keywords == {"approximate": "tanh"}:
                return "gelu_tanh"
            if getattr(fn, "__func__", None) is getattr(t, "_gelu_tanh_python", object()):
                return "gelu_tanh"
            return None
    return None


def _fusable_linear(mod) -> bool:
    return (type(mod) is Int8Linear and mod.act == "dynamic" and mod.activation is None
            and not mod._forward_hooks and not mod._forward_pre_hooks)


def same_forward(mod, ref) -> bool:
    """Whether ``type(mod).forward`` is ``ref`` or has its bytecode and names (transformers' "Copied from"
    classes: RobertaIntermediate is BertIntermediate's code under another name)."""
    fwd = getattr(type(mod), "forward", None)
    if fwd is ref:
        return True
    code, rc = getattr(fwd, "__code__", None), ref.__code__
    return code is not None and code.co_code == rc.co_code and code.co_names == rc.co_names \
        and code.co_varnames == rc.co_varnames


def _is_bert_intermediate(mod) -> bool:
    ref = _bert_intermediate_forward()
    return ref is not None and same_forward(mod, ref)


def fuse_activations_(model: nn.Module) -> list[str]:
    """Fuse every provable (Int8Linear, activation) pair of ``model`` in place (module docstring).

    Returns one line per fusion: ``"<linear name> + <activation class> -> activation='gelu'"``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"llmaccel.fuse_activations_: model must be an nn.Module, got {type(model).__name__}")
    # A Linear reachable under two names is used twice: its other use must not get the activation.
    uses: dict[int, int] = {}
    for _, m in model.named_modules(remove_duplicate=False):
        uses[id(m)] = uses.get(id(m), 0) + 1

    def fusable(lin) -> bool:
        return _fusable_linear(lin) and uses[id(lin)] == 1

    done = []
    for name, mod in list(model.named_modules()):
        prefix = f"{name}." if name else ""
        if _is_bert_intermediate(mod) and not mod._forward_hooks and not mod._forward_pre_hooks:
            lin, act = getattr(mod, "dense", None), getattr(mod, "intermediate_act_fn", None)
            a = activation_name(act)
            if a is not None and fusable(lin):
                lin.activation = a
                mod.intermediate_act_fn = nn.Identity()
                done.append(f"{prefix}dense + {type(act).__name__} -> activation='{a}'")
        elif type(mod) is nn.Sequential:
            children = list(mod._modules.items())
            for (ln, lin), (an, act) in zip(children, children[1:]):
                a = activation_name(act)
                if a is not None and fusable(lin):
                    lin.activation = a
                    mod._modules[an] = nn.Identity()
                    done.append(f"{prefix}{ln} + {type(act).__name__} -> activation='{a}'")
    return done
