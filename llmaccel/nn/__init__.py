"""Drop-in nn.Module replacements (thin wrappers over llmaccel.ops)."""

from .attention import CachedAttention, KVCache, MultiheadAttention
from .int8_linear import Int8Linear
from .sparse_linear import SparseLinear

__all__ = ["Int8Linear", "SparseLinear", "MultiheadAttention", "CachedAttention", "KVCache"]
