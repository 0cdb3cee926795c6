"""Op layer: ``torch.library`` schemas, fakes, autograd and backend dispatch, one module per op."""

from .int8_mm import int8_mm, int8_mm_reference

__all__ = ["int8_mm", "int8_mm_reference"]
