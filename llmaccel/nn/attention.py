"""Attention modules over ``llmaccel.attention``: a drop-in ``nn.MultiheadAttention`` and a KV-cache decoder layer.

``MultiheadAttention``
    A subclass of ``torch.nn.MultiheadAttention`` with the same constructor,
    parameters (``in_proj_weight`` or ``q/k/v_proj_weight`` when ``kdim`` /
    ``vdim`` differ, ``in_proj_bias``, ``out_proj``, ``bias_k`` / ``bias_v``),
    initialisation, ``state_dict`` keys and forward contract; only
    ``forward`` is replaced.  Masks follow torch's MHA convention (bool
    ``True`` = *blocked*, float = added to the scores), which is the opposite
    of the op's bool convention: the module converts.

    * ``need_weights=False``: one fused ``llmaccel.attention`` call (masks
      merged into one bool or additive mask; ``is_causal`` forwarded as the
      op's top-left causal flag exactly when torch forwards it to SDPA: no
      key_padding_mask).  Dtypes the op does not take (float64) run
      ``F.scaled_dot_product_attention`` instead, which is what torch runs.
    * ``need_weights=True``: the explicit path (scores, softmax, dropout,
      matmul), op for op what ``F.multi_head_attention_forward`` does, so the
      returned weights (averaged over heads, or ``[N, H, L, S]`` per head)
      and even the dropout pattern under one seed match torch.
    * Fully masked query rows: the fused path returns 0 for them (the op's
      rule); torch's MHA returns NaN there.

    Not covered: nested-tensor inputs, and ``nn.TransformerEncoderLayer``'s
    own inference fast path (it reads the weights and bypasses any
    ``self_attn.forward``, ours included).

``CachedAttention`` + ``KVCache``
    A decoder self-attention layer (q/k/v/o projections, grouped-query
    attention with ``num_kv_heads`` dividing ``num_heads``) that appends each
    call's keys/values to a :class:`KVCache` and attends the new queries to
    everything cached with ``is_causal=True, causal_bottom_right=True``
    (query i of a chunk of Lq sees cache positions ``<= Lk - Lq + i``), so
    prefill, chunked prefill and token-by-token decoding all give the
    outputs of one causal forward over the whole sequence.  K/V are never
    repeated over the group (``enable_gqa=True``).  No positional encoding
    is applied (add RoPE or similar outside, before the layer's input or by
    subclassing :meth:`CachedAttention.project`).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.attention import attention
from ..ops.causal import causal_allowed
from ..ops.quantize import FLOAT_DTYPES

__all__ = ["MultiheadAttention", "CachedAttention", "KVCache"]


# --------------------------------------------------------------------------
# MultiheadAttention
# --------------------------------------------------------------------------

def _check_mask_dtype(mask: Optional[Tensor], name: str) -> None:
    if mask is not None and mask.dtype != torch.bool and not mask.is_floating_point():
        raise TypeError(f"MultiheadAttention: only bool and floating-point {name} are supported, got {mask.dtype}")


def _pad_key(mask: Optional[Tensor]) -> Optional[Tensor]:
    """Append one 'attend' column (False for a bool blocked-mask, 0 for an additive one) along the key dim."""
    if mask is None:
        return None
    return torch.cat([mask, mask.new_zeros((*mask.shape[:-1], 1))], dim=-1)


def _additive(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """A bool blocked-mask as an additive one (-inf where blocked), or a float mask as it is."""
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(mask, float("-inf"))
    return mask


class MultiheadAttention(nn.MultiheadAttention):
    """``torch.nn.MultiheadAttention`` whose forward runs ``llmaccel.attention`` (module docstring).

    Same constructor (``embed_dim, num_heads, dropout=0.0, bias=True,
    add_bias_kv=False, add_zero_attn=False, kdim=None, vdim=None,
    batch_first=False, device=None, dtype=None``), same parameters and
    initialisation (one seed gives the weights torch's module gets), same
    ``state_dict``; :meth:`from_torch` converts an existing module.
    """

    @classmethod
    def from_torch(cls, mha: nn.MultiheadAttention) -> "MultiheadAttention":
        """A copy of ``mha`` (weights cloned with their dtype, device and ``requires_grad``; config; train/eval)."""
        if not isinstance(mha, nn.MultiheadAttention):
            raise TypeError(f"MultiheadAttention.from_torch expects a torch.nn.MultiheadAttention, "
                            f"got {type(mha).__name__}")
        kdim = mha.kdim if mha.kdim != mha.embed_dim else None
        vdim = mha.vdim if mha.vdim != mha.embed_dim else None
        new = cls(mha.embed_dim, mha.num_heads, dropout=mha.dropout, bias=mha.in_proj_bias is not None,
                  add_bias_kv=mha.bias_k is not None, add_zero_attn=mha.add_zero_attn, kdim=kdim, vdim=vdim,
                  batch_first=mha.batch_first, device="meta")
        if not mha._qkv_same_embed_dim and new._qkv_same_embed_dim:  # kdim == vdim == embed_dim passed explicitly
            raise ValueError("MultiheadAttention.from_torch: the source has separate q/k/v projections with "
                             "kdim == vdim == embed_dim, which the constructor cannot reproduce")
        if mha.out_proj.bias is None and new.out_proj.bias is not None:
            new.out_proj.bias = None
        source = mha.state_dict(keep_vars=True)
        new.load_state_dict({k: v.detach().clone() for k, v in source.items()}, assign=True)
        for name, p in new.named_parameters():
            p.requires_grad_(source[name].requires_grad)
        new.train(mha.training)
        return new

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Optional[Tensor] = None,
                need_weights: bool = True, attn_mask: Optional[Tensor] = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[Tensor, Optional[Tensor]]:
        """Same inputs and outputs as ``torch.nn.MultiheadAttention.forward`` (see its documentation)."""
        E, H = self.embed_dim, self.num_heads
        hd = E // H
        batched = query.dim() == 3
        if query.dim() not in (2, 3) or key.dim() != query.dim() or value.dim() != query.dim():
            raise ValueError(f"MultiheadAttention: query, key and value must all be 3-D (batched) or 2-D "
                             f"(unbatched), got {query.dim()}-D, {key.dim()}-D and {value.dim()}-D")
        _check_mask_dtype(key_padding_mask, "key_padding_mask")
        _check_mask_dtype(attn_mask, "attn_mask")
        # Work batch-first: [N, L, E].
        if not batched:
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif not self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        N, L, Eq = query.shape
        S = key.shape[1]
        if Eq != E:
            raise ValueError(f"MultiheadAttention: expected query embedding dim {E}, got {Eq}")
        if key.shape[:2] != value.shape[:2] or key.shape[0] != N:
            raise ValueError(f"MultiheadAttention: key and value must share batch and sequence dims with each other "
                             f"(and the batch with query); got query {tuple(query.shape)}, key {tuple(key.shape)}, "
                             f"value {tuple(value.shape)} (batch-first view)")
        if key_padding_mask is not None and tuple(key_padding_mask.shape) != (N, S):
            raise ValueError(f"MultiheadAttention: key_padding_mask must have shape (N, S) = ({N}, {S}) "
                             f"((S,) for unbatched input), got {tuple(key_padding_mask.shape)}")
        if is_causal and attn_mask is None:
            raise RuntimeError("Need attn_mask if specifying the is_causal hint. You may use the Transformer module "
                               "method `generate_square_subsequent_mask` to create this mask.")

        # Masks in torch's convention (bool True = blocked, float additive) as [1|N, 1|H, L, S].
        use_causal_flag = is_causal and key_padding_mask is None and not need_weights
        mask = None
        if attn_mask is not None and not use_causal_flag:
            if attn_mask.dim() == 2:
                if tuple(attn_mask.shape) != (L, S):
                    raise RuntimeError(f"The shape of the 2D attn_mask is {tuple(attn_mask.shape)}, but should be "
                                       f"{(L, S)}.")
                mask = attn_mask.view(1, 1, L, S)
            elif attn_mask.dim() == 3:
                if tuple(attn_mask.shape) != (N * H, L, S):
                    raise RuntimeError(f"The shape of the 3D attn_mask is {tuple(attn_mask.shape)}, but should be "
                                       f"{(N * H, L, S)}.")
                mask = attn_mask.view(N, H, L, S)
            else:
                raise RuntimeError(f"attn_mask's dimension {attn_mask.dim()} is not supported")
        kpm = key_padding_mask.view(N, 1, 1, S) if key_padding_mask is not None else None
        causal = use_causal_flag

        # In-projection.
        if self._qkv_same_embed_dim:
            w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        else:
            w_q, w_k, w_v = self.q_proj_weight, self.k_proj_weight, self.v_proj_weight
        b_q = b_k = b_v = None
        if self.in_proj_bias is not None:
            b_q, b_k, b_v = self.in_proj_bias.chunk(3)
        q = F.linear(query, w_q, b_q)
        k = F.linear(key, w_k, b_k)
        v = F.linear(value, w_v, b_v)
        if self.bias_k is not None and self.bias_v is not None:
            k = torch.cat([k, self.bias_k.expand(N, 1, E)], dim=1)
            v = torch.cat([v, self.bias_v.expand(N, 1, E)], dim=1)
            mask, kpm = _pad_key(mask), _pad_key(kpm)
        elif self.bias_k is not None or self.bias_v is not None:
            raise RuntimeError("MultiheadAttention: bias_k and bias_v must be both set or both None")
        q = q.view(N, L, H, hd).transpose(1, 2)
        k = k.view(N, k.shape[1], H, hd).transpose(1, 2)
        v = v.view(N, v.shape[1], H, hd).transpose(1, 2)
        if self.add_zero_attn:
            k = torch.cat([k, k.new_zeros((N, H, 1, hd))], dim=2)
            v = torch.cat([v, v.new_zeros((N, H, 1, hd))], dim=2)
            mask, kpm = _pad_key(mask), _pad_key(kpm)
        dropout_p = self.dropout if self.training else 0.0

        if need_weights:
            out, weights = self._explicit(q, k, v, mask, kpm, dropout_p)
            weights = weights.mean(dim=1) if average_attn_weights else weights
        else:
            weights = None
            if q.dtype in FLOAT_DTYPES:
                out = attention(q, k, v, self._op_mask(mask, kpm, q.dtype), dropout_p, causal)
            else:  # float64 and friends: what torch's own module runs
                m = None
                if mask is not None or kpm is not None:
                    m = sum(_additive(t, q.dtype) for t in (mask, kpm) if t is not None)
                out = F.scaled_dot_product_attention(q, k, v, m, dropout_p, causal)
        out = self.out_proj(out.transpose(1, 2).reshape(N, L, E))

        if not batched:
            out = out.squeeze(0)
            if weights is not None:
                weights = weights.squeeze(0)
        elif not self.batch_first:
            out = out.transpose(0, 1)
        return out, weights

    @staticmethod
    def _op_mask(mask: Optional[Tensor], kpm: Optional[Tensor], dtype: torch.dtype) -> Optional[Tensor]:
        """The merged mask in the op's convention: bool True = attend when both are bool, else additive."""
        if mask is None and kpm is None:
            return None
        parts = [t for t in (mask, kpm) if t is not None]
        if all(t.dtype == torch.bool for t in parts):
            blocked = parts[0] if len(parts) == 1 else parts[0] | parts[1]
            return ~blocked
        if len(parts) == 1:
            return parts[0]
        return _additive(parts[0], dtype) + _additive(parts[1], dtype)

    def _explicit(self, q, k, v, mask, kpm, dropout_p):
        """Scores, softmax, dropout, matmul, as ``F.multi_head_attention_forward`` does with need_weights=True."""
        scores = torch.matmul(q * math.sqrt(1.0 / float(q.shape[-1])), k.transpose(-2, -1))
        for t in (mask, kpm):
            if t is not None:
                scores = scores + _additive(t, q.dtype).to(scores.dtype)
        weights = torch.softmax(scores, dim=-1)
        if dropout_p > 0.0:
            weights = F.dropout(weights, p=dropout_p)
        return torch.matmul(weights, v), weights


# --------------------------------------------------------------------------
# KV cache + decoder attention
# --------------------------------------------------------------------------

class KVCache:
    """Keys and values of one attention layer, ``[B, Hkv, capacity, D]`` each, filled up to ``length``.

    ``max_len=None`` grows on demand (capacity doubles, amortised O(1) per
    token); an int preallocates that many positions and raises when an
    append would pass it (no reallocation ever: the buffers keep their
    addresses, as CUDA graphs want).  :meth:`append` writes new K/V in place
    and returns views of everything cached so far.  Meant for inference (run
    the decoding loop under ``torch.no_grad()``): appends write in place, so
    backpropagating through several appends is not supported.
    """

    def __init__(self, batch_size: int, num_kv_heads: int, head_dim: int, max_len: Optional[int] = None, *,
                 value_dim: Optional[int] = None, dtype: Optional[torch.dtype] = None, device=None) -> None:
        for name, n in (("batch_size", batch_size), ("num_kv_heads", num_kv_heads), ("head_dim", head_dim)):
            if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
                raise ValueError(f"KVCache: {name} must be a positive int, got {n!r}")
        if max_len is not None and (not isinstance(max_len, int) or isinstance(max_len, bool) or max_len <= 0):
            raise ValueError(f"KVCache: max_len must be a positive int or None (grow on demand), got {max_len!r}")
        self.max_len = max_len
        self.length = 0
        dtype = torch.get_default_dtype() if dtype is None else dtype
        capacity = max_len if max_len is not None else 16
        dv = head_dim if value_dim is None else value_dim
        self.key = torch.zeros((batch_size, num_kv_heads, capacity, head_dim), dtype=dtype, device=device)
        self.value = torch.zeros((batch_size, num_kv_heads, capacity, dv), dtype=dtype, device=device)

    @property
    def capacity(self) -> int:
        return self.key.shape[2]

    def __len__(self) -> int:
        return self.length

    def reset(self) -> None:
        """Forget everything cached (the buffers are kept)."""
        self.length = 0

    def append(self, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor]:
        """Append ``key`` [B, Hkv, n, D] / ``value`` [B, Hkv, n, Dv]; return the cached ``[:, :, :length]`` views."""
        B, Hkv, cap, D = self.key.shape
        n = key.shape[2]
        if (key.dim() != 4 or tuple(key.shape) != (B, Hkv, n, D) or value.dim() != 4
                or tuple(value.shape) != (B, Hkv, n, self.value.shape[3])):
            raise ValueError(f"KVCache.append: expected key [B, Hkv, n, D] = [{B}, {Hkv}, n, {D}] and value "
                             f"[{B}, {Hkv}, n, {self.value.shape[3]}], got {tuple(key.shape)} and "
                             f"{tuple(value.shape)}")
        end = self.length + n
        if end > cap:
            if self.max_len is not None:
                raise RuntimeError(f"KVCache: appending {n} positions to {self.length} cached would pass "
                                   f"max_len={self.max_len}")
            new_cap = max(end, 2 * cap)
            grown_k = self.key.new_zeros((B, Hkv, new_cap, D))
            grown_v = self.value.new_zeros((B, Hkv, new_cap, self.value.shape[3]))
            grown_k[:, :, :self.length] = self.key[:, :, :self.length]
            grown_v[:, :, :self.length] = self.value[:, :, :self.length]
            self.key, self.value = grown_k, grown_v
        self.key[:, :, self.length:end] = key
        self.value[:, :, self.length:end] = value
        self.length = end
        return self.key[:, :, :end], self.value[:, :, :end]


class CachedAttention(nn.Module):
    """Causal decoder self-attention with grouped-query heads and an optional :class:`KVCache`.

    ``x`` [B, L, embed_dim] -> [B, L, embed_dim].  Parameters: ``q_proj``
    [Hq * head_dim, E], ``k_proj`` / ``v_proj`` [Hkv * head_dim, E],
    ``o_proj`` [E, Hq * head_dim] (``nn.Linear``; biases when ``bias``), the
    Llama layout.  ``forward(x, cache)`` appends x's K/V to ``cache`` and
    attends x's queries to every cached position (bottom-right causal);
    without a cache it is a plain causal self-attention over x.
    """

    def __init__(self, embed_dim: int, num_heads: int, num_kv_heads: Optional[int] = None,
                 head_dim: Optional[int] = None, *, bias: bool = False, dropout: float = 0.0,
                 scale: Optional[float] = None, device=None, dtype=None) -> None:
        super().__init__()
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if embed_dim <= 0 or num_heads <= 0 or num_kv_heads <= 0:
            raise ValueError(f"CachedAttention: embed_dim, num_heads and num_kv_heads must be positive, got "
                             f"{embed_dim}, {num_heads}, {num_kv_heads}")
        if num_heads % num_kv_heads:
            raise ValueError(f"CachedAttention: num_heads ({num_heads}) must be a multiple of num_kv_heads "
                             f"({num_kv_heads})")
        if head_dim is None:
            if embed_dim % num_heads:
                raise ValueError(f"CachedAttention: embed_dim ({embed_dim}) must be divisible by num_heads "
                                 f"({num_heads}) unless head_dim is given")
            head_dim = embed_dim // num_heads
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"CachedAttention: dropout must be in [0, 1), got {dropout}")
        self.embed_dim, self.num_heads, self.num_kv_heads, self.head_dim = embed_dim, num_heads, num_kv_heads, head_dim
        self.dropout = dropout
        self.scale = scale
        kw = {"device": device, "dtype": dtype}
        self.q_proj = nn.Linear(embed_dim, num_heads * head_dim, bias=bias, **kw)
        self.k_proj = nn.Linear(embed_dim, num_kv_heads * head_dim, bias=bias, **kw)
        self.v_proj = nn.Linear(embed_dim, num_kv_heads * head_dim, bias=bias, **kw)
        self.o_proj = nn.Linear(num_heads * head_dim, embed_dim, bias=bias, **kw)

    def new_cache(self, batch_size: int, max_len: Optional[int] = None) -> KVCache:
        """An empty cache for this layer (``max_len=None``: grows on demand), on the weights' device and dtype."""
        w = self.k_proj.weight
        return KVCache(batch_size, self.num_kv_heads, self.head_dim, max_len, dtype=w.dtype, device=w.device)

    def project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``x`` [B, L, E] -> q [B, Hq, L, D], k / v [B, Hkv, L, D] (override to add rotary embeddings etc.)."""
        B, L, _ = x.shape
        q = self.q_proj(x).view(B, L, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, L, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, L, self.num_kv_heads, self.head_dim).transpose(1, 2)
        return q, k, v

    def forward(self, x: Tensor, cache: Optional[KVCache] = None, attn_mask: Optional[Tensor] = None) -> Tensor:
        """``x`` [B, L, E] (the new tokens); ``attn_mask`` (optional, op convention: bool True = attend, or
        additive float) broadcastable to [B, Hq, L, Lk] over all keys attended (cached + new), combined with
        the causal mask."""
        if x.dim() != 3 or x.shape[-1] != self.embed_dim:
            raise ValueError(f"CachedAttention: x must be [B, L, embed_dim={self.embed_dim}], got {tuple(x.shape)}")
        B, L, _ = x.shape
        q, k, v = self.project(x)
        if cache is not None:
            k, v = cache.append(k, v)
        Lk = k.shape[2]
        dropout_p = self.dropout if self.training else 0.0
        gqa = self.num_heads != self.num_kv_heads
        if attn_mask is None:
            out = attention(q, k, v, None, dropout_p, is_causal=True, scale=self.scale, enable_gqa=gqa,
                            causal_bottom_right=True)
        else:
            # The op takes a mask or is_causal, not both: fold the bottom-right causal mask in.
            causal = causal_allowed(0, L, Lk, Lk - L, device=x.device)
            if attn_mask.dtype == torch.bool:
                mask = attn_mask & causal
            else:
                mask = attn_mask.masked_fill(~causal, float("-inf"))
            out = attention(q, k, v, mask, dropout_p, scale=self.scale, enable_gqa=gqa)
        return self.o_proj(out.transpose(1, 2).reshape(B, L, self.num_heads * self.head_dim))

    def extra_repr(self) -> str:
        return (f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, num_kv_heads={self.num_kv_heads}, "
                f"head_dim={self.head_dim}, dropout={self.dropout}")
