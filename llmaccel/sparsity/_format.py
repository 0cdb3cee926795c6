"""What the compressed weight formats share: dense expansion, int8 view, streamed bytes, checkpoints."""

from __future__ import annotations

from torch import Tensor

from . import _checks as C
from .int8 import dequantize


class CompressedWeight:
    """Methods common to :class:`NMPackedWeight`, :class:`BitmapWeight` and :class:`BSRWeight`.

    A subclass is a frozen dataclass whose fields are its tensors (``TENSORS``, in checkpoint order),
    int pairs (``PAIRS``, stored as 2-element int64 tensors) and ``scale`` (fp32 [N_out] for int8
    values, else None), named ``NAME`` in errors; it implements ``_scatter()``, the dense
    ``[N_out, K]`` weight in the values' dtype (the int8 codes for an int8 weight).
    """

    NAME: str
    TENSORS: tuple[str, ...]
    PAIRS: tuple[str, ...]
    scale: Tensor | None

    def _scatter(self) -> Tensor:  # pragma: no cover - every format overrides it
        raise NotImplementedError

    @classmethod
    def _trusted(cls, **fields):
        """The object for fields already checked elsewhere (a module checks its weight once when it is built or
        loaded): no pass over the data.  For the kernels' per-call paths only; every public way in checks."""
        obj = object.__new__(cls)
        for name in cls.__dataclass_fields__:
            object.__setattr__(obj, name, fields.get(name))
        return obj

    @property
    def quantized(self) -> bool:
        return self.scale is not None

    def to_dense(self) -> Tensor:
        """The pruned dense weight ``[N_out, K]``: exact for float values, ``q * scale`` (fp32) for int8."""
        dense = self._scatter()
        return dense if self.scale is None else dequantize(dense, self.scale)

    def int8_dense(self) -> tuple[Tensor, Tensor]:
        """int8 formats only: ``(q int8 [N_out, K], scale fp32 [N_out])``, the exact integer weight."""
        if self.scale is None:
            raise ValueError(f"{self.NAME}.int8_dense: this weight is not quantized")
        return self._scatter(), self.scale

    def nbytes(self) -> int:
        """Bytes of the tensors a kernel streams (the format's tensors and the int8 scales)."""
        tensors = [getattr(self, f) for f in self.TENSORS] + [self.scale]
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)

    def state_dict(self) -> dict[str, Tensor]:
        state = {f: getattr(self, f) for f in self.TENSORS}
        state.update({f: C.pair_tensor(getattr(self, f)) for f in self.PAIRS})
        if self.scale is not None:
            state["scale"] = self.scale
        return state

    @classmethod
    def from_state_dict(cls, state):
        """Rebuild from :meth:`state_dict` (e.g. after ``torch.load(weights_only=True)``); checks every field."""
        C.check_keys(state, cls.TENSORS + cls.PAIRS, ("scale",), cls.NAME)
        return cls(**{f: state[f] for f in cls.TENSORS}, **{f: C.int_pair(state, f, cls.NAME) for f in cls.PAIRS},
                   scale=state.get("scale"))
