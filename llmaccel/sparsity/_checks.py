"""Argument and state checks shared by pruning and the compressed formats.

Every failure is a ``ValueError`` (``TypeError`` for a non-tensor) whose
message starts with ``where`` (the function or format) and names the
argument or state field, so a corrupt checkpoint says which entry is wrong.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import Tensor

# Value dtypes the formats store as-is (kernels exist or will exist for these); int8 is the quantized case.
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

_NM = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


def parse_nm(pattern, where: str) -> tuple[int, int]:
    """``"N:M"`` -> ``(N, M)`` with ``1 <= N < M <= 256`` (indices must fit a byte)."""
    match = _NM.match(pattern) if isinstance(pattern, str) else None
    if match is None:
        raise ValueError(f"{where}: pattern must be 'N:M' (e.g. '2:4'), 'unstructured' or 'block', got {pattern!r}")
    n, m = int(match.group(1)), int(match.group(2))
    if not 1 <= n < m <= 256:
        raise ValueError(f"{where}: pattern {pattern!r} needs 1 <= N < M <= 256")
    return n, m


def check_weight(weight, where: str, name: str = "weight") -> None:
    """A finite 2-D floating-point tensor with no empty dimension."""
    if not isinstance(weight, Tensor):
        raise TypeError(f"{where}: {name} must be a torch.Tensor, got {type(weight).__name__}")
    if weight.dim() != 2 or weight.shape[0] == 0 or weight.shape[1] == 0:
        raise ValueError(f"{where}: {name} must be 2-D [out_features, in_features] with both > 0, "
                         f"got shape {tuple(weight.shape)}")
    if not weight.is_floating_point():
        raise ValueError(f"{where}: {name} must be a floating-point tensor, got {weight.dtype}")
    if not bool(torch.isfinite(weight).all()):
        raise ValueError(f"{where}: {name} contains NaN or inf")


def check_mask(mask, weight: Tensor, where: str) -> None:
    if not isinstance(mask, Tensor):
        raise TypeError(f"{where}: mask must be a torch.Tensor, got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise ValueError(f"{where}: mask must be a bool tensor, got {mask.dtype}")
    if mask.shape != weight.shape:
        raise ValueError(f"{where}: mask must have the weight's shape {tuple(weight.shape)}, got {tuple(mask.shape)}")
    if mask.device != weight.device:
        raise ValueError(f"{where}: mask is on {mask.device}, weight on {weight.device}")


def check_field(t, where: str, field: str, *, dtype=None, dtypes=None, shape=None, dim=None) -> Tensor:
    """One tensor field of a format: type, dtype, shape (None entries are free)."""
    if not isinstance(t, Tensor):
        raise ValueError(f"{where}: field {field!r} must be a torch.Tensor, got {type(t).__name__}")
    if dtype is not None and t.dtype != dtype:
        raise ValueError(f"{where}: field {field!r} must be {dtype}, got {t.dtype}")
    if dtypes is not None and t.dtype not in dtypes:
        raise ValueError(f"{where}: field {field!r} must be one of {[str(d) for d in dtypes]}, got {t.dtype}")
    if dim is not None and t.dim() != dim:
        raise ValueError(f"{where}: field {field!r} must be {dim}-D, got shape {tuple(t.shape)}")
    if shape is not None:
        ok = t.dim() == len(shape) and all(s is None or s == d for s, d in zip(shape, t.shape))
        if not ok:
            want = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
            raise ValueError(f"{where}: field {field!r} must have shape {want}, got {tuple(t.shape)}")
    return t


def check_values_and_scale(values: Tensor, scale, rows: int, where: str) -> None:
    """Float values (finite), or int8 values in [-127, 127] with fp32 per-row scales (finite, > 0)."""
    if scale is None:
        check_field(values, where, "values", dtypes=FLOAT_DTYPES)
        if not bool(torch.isfinite(values).all()):
            raise ValueError(f"{where}: field 'values' contains NaN or inf")
        return
    check_field(values, where, "values", dtype=torch.int8)
    if bool((values == -128).any()):
        raise ValueError(f"{where}: field 'values' holds -128; symmetric int8 values lie in [-127, 127]")
    check_field(scale, where, "scale", dtype=torch.float32, shape=(rows,))
    if not bool((torch.isfinite(scale) & (scale > 0)).all()):
        raise ValueError(f"{where}: field 'scale' must be finite and > 0 everywhere")
    if scale.device != values.device:
        raise ValueError(f"{where}: field 'scale' is on {scale.device}, 'values' on {values.device}")


def check_same_device(where: str, **fields: Tensor) -> None:
    devices = {name: t.device for name, t in fields.items()}
    if len(set(devices.values())) > 1:
        raise ValueError(f"{where}: fields live on different devices: {devices}")


def check_keys(state, required: tuple[str, ...], optional: tuple[str, ...], where: str) -> None:
    if not isinstance(state, Mapping):
        raise ValueError(f"{where}: state must be a mapping of field name to tensor, got {type(state).__name__}")
    missing = [k for k in required if k not in state]
    unexpected = [k for k in state if k not in required and k not in optional]
    if missing or unexpected:
        raise ValueError(f"{where}: state has missing fields {missing} and unexpected fields {unexpected}")


def int_pair(state: Mapping, key: str, where: str) -> tuple[int, int]:
    """A metadata field stored as an int64 tensor of two positive entries (shape, pattern, block size)."""
    t = check_field(state[key], where, key, dtype=torch.int64, shape=(2,))
    a, b = (int(v) for v in t.tolist())
    if a <= 0 or b <= 0:
        raise ValueError(f"{where}: field {key!r} must hold two positive integers, got {(a, b)}")
    return a, b


def pair_tensor(pair: tuple[int, int]) -> Tensor:
    return torch.tensor(list(pair), dtype=torch.int64)


def check_int_pair(value, where: str, field: str) -> tuple[int, int]:
    """A Python (int, int) with both > 0 (shape, block size, N:M)."""
    ok = (isinstance(value, (tuple, list)) and len(value) == 2
          and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value))
    if not ok:
        raise ValueError(f"{where}: {field} must be a pair of positive ints, got {value!r}")
    return int(value[0]), int(value[1])


def check_quantize(weight: Tensor, quantize, where: str) -> None:
    """``from_dense``'s value options: float32 / float16 / bfloat16 weights, stored as-is or as int8."""
    if quantize not in (None, "int8"):
        raise ValueError(f"{where}: quantize must be None or 'int8', got {quantize!r}")
    if weight.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{where}: weight must be float32, float16 or bfloat16, got {weight.dtype}")
