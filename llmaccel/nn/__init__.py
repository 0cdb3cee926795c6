"""Drop-in nn.Module replacements (thin wrappers over llmaccel.ops)."""

from .attention import CachedAttention, KVCache, MultiheadAttention
from .int8_linear import Int8Linear

__all__ = ["Int8Linear", "MultiheadAttention", "CachedAttention", "KVCache"]
