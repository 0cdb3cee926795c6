"""Op layer: ``torch.library`` schemas, fakes, autograd and backend dispatch, one module per op."""

from .attention import attention, attention_reference
from .int8_linear import int8_linear, int8_linear_reference
from .int8_mm import int8_mm, int8_mm_reference
from .quantize import quantize_per_token, quantize_per_token_reference

__all__ = ["attention", "attention_reference", "int8_mm", "int8_mm_reference", "quantize_per_token",
           "quantize_per_token_reference", "int8_linear", "int8_linear_reference"]
