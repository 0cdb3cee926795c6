"""Hugging Face transformers: ``attn_implementation="llmaccel"``.

Usage::

    import llmaccel.integrations.transformers as llmaccel_hf
    llmaccel_hf.register()
    model = AutoModelForCausalLM.from_pretrained(name, attn_implementation="llmaccel")
    # or, on a built model: model.set_attn_implementation("llmaccel")

:func:`register` adds :func:`attention_forward` to transformers'
``AttentionInterface`` and transformers' own ``sdpa_mask`` to
``AttentionMaskInterface`` under the same name.  The mask registration is
not optional: for an implementation without a mask function transformers
builds no mask at all, silently dropping causal and padding masking.
``sdpa_mask`` produces what :func:`attention_forward` consumes: a bool
``[B, 1, Lq, Lk]`` mask (True = attend) or ``None`` when the mask is purely
causal (then ``is_causal`` is used) or absent.

:func:`attention_forward` follows transformers' ``sdpa_attention_forward``
(integrations/sdpa_attention.py) with ``llmaccel.attention`` in place of
``F.scaled_dot_product_attention``: grouped-query attention runs natively
(``enable_gqa=True``, K/V never repeated); the 4-D mask (bool or additive
float) is sliced to the key length; ``is_causal`` (top-left, as in SDPA) is
used only when no mask is given, the query has more than one token and the
module is causal.  ``position_bias`` (T5-style relative bias) is folded
into an additive mask.  Not supported: ``softcap`` (raises, as sdpa does),
returning attention weights (``output_attentions``: None is returned, as
sdpa does) and transformers' paged continuous-batching cache (raises).
Dtypes the op does not take (float64) fall back to
``F.scaled_dot_product_attention``.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ..ops.attention import attention
from ..ops.causal import causal_allowed
from ..ops.quantize import FLOAT_DTYPES

__all__ = ["NAME", "register", "attention_forward"]

NAME = "llmaccel"


def _position_bias_mask(position_bias: Tensor, attention_mask: Optional[Tensor], is_causal: bool, q_len: int,
                        kv_len: int) -> Tensor:
    """``position_bias`` plus the mask (or the top-left causal pattern) as one additive mask (sdpa's rule)."""
    min_dtype = torch.finfo(position_bias.dtype).min
    if attention_mask is None:
        if not is_causal:
            return position_bias
        causal = causal_allowed(0, q_len, kv_len, device=position_bias.device)
        return torch.where(causal.view(1, 1, q_len, kv_len), position_bias, min_dtype)
    if attention_mask.dtype == torch.bool:
        return torch.where(attention_mask, position_bias, min_dtype)
    return position_bias + attention_mask


def attention_forward(module: torch.nn.Module, query: Tensor, key: Tensor, value: Tensor,
                      attention_mask: Optional[Tensor], scaling: Optional[float] = None, dropout: float = 0.0,
                      **kwargs) -> tuple[Tensor, None]:
    """transformers attention function: q [B, Hq, Lq, D], k/v [B, Hkv, Lk, D] -> ([B, Lq, Hq, Dv] contiguous, None)."""
    if kwargs.get("softcap") is not None:
        raise ValueError("attn_implementation='llmaccel' does not support `softcap`; use 'eager' for this model")
    cache = kwargs.get("cache")
    if cache is not None and type(cache).__name__ == "PagedAttentionCache":
        raise NotImplementedError("attn_implementation='llmaccel' does not support transformers' paged "
                                  "(continuous batching) cache")
    q_len, kv_len = query.shape[2], key.shape[2]
    enable_gqa = query.shape[1] != key.shape[1]  # module.num_key_value_groups > 1
    if enable_gqa and getattr(module, "num_key_value_groups", None) not in (None, query.shape[1] // key.shape[1]):
        raise ValueError(f"llmaccel attention: {query.shape[1]} query heads over {key.shape[1]} key/value heads "
                         f"disagrees with module.num_key_value_groups={module.num_key_value_groups}")

    packing = kwargs.get("llmaccel_packing")  # an unpadded encoder's real tokens (integrations/unpad.py)
    if packing is not None:
        def masked(q, k, v, m):
            if q.dtype in FLOAT_DTYPES:
                return attention(q, k, v, m, dropout, False, scaling, enable_gqa)
            return F.scaled_dot_product_attention(q, k, v, attn_mask=m, dropout_p=dropout, scale=scaling,
                                                  enable_gqa=enable_gqa)
        return packing.attend(query, key, value, masked), None

    mask = attention_mask
    if mask is not None and mask.dim() == 4:
        mask = mask[:, :, :, :kv_len]
    is_causal = kwargs.get("is_causal")
    is_causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    is_causal = bool(q_len > 1 and mask is None and is_causal)

    position_bias = kwargs.get("position_bias")
    if position_bias is not None:
        mask = _position_bias_mask(position_bias, mask, is_causal, q_len, kv_len)
        is_causal = False
    if mask is not None and mask.dtype != torch.bool and mask.dtype != query.dtype:
        mask = mask.to(query.dtype)

    if query.dtype in FLOAT_DTYPES:
        out = attention(query, key, value, mask, dropout, is_causal, scaling, enable_gqa)
    else:
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=dropout,
                                             is_causal=is_causal, scale=scaling, enable_gqa=enable_gqa)
    return out.transpose(1, 2).contiguous(), None


def register(name: str = NAME) -> str:
    """Register ``name`` (default ``"llmaccel"``) with transformers' AttentionInterface and AttentionMaskInterface.

    Idempotent; returns ``name``, ready for ``attn_implementation=name``.
    Raises ImportError when transformers (>= 4.53, which has
    ``AttentionMaskInterface``) is not installed.
    """
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    except ImportError as exc:
        raise ImportError("llmaccel.integrations.transformers.register() needs transformers with "
                          "AttentionInterface and AttentionMaskInterface (>= 4.53): "
                          f"{exc.__class__.__name__}: {exc}") from exc
    AttentionInterface.register(name, attention_forward)
    AttentionMaskInterface.register(name, sdpa_mask)
    return name
