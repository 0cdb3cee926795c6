"""Argument validation shared by the op layer: clear errors that name the op and the argument."""

from __future__ import annotations

import torch


def fail(op: str, msg: str, exc: type = ValueError):
    raise exc(f"llmaccel.{op}: {msg}")


def check_tensor(op: str, name: str, t, *, dtype: torch.dtype | None = None, ndim: int | None = None) -> None:
    if not isinstance(t, torch.Tensor):
        fail(op, f"{name} must be a torch.Tensor, got {type(t).__name__}", TypeError)
    if dtype is not None and t.dtype != dtype:
        fail(op, f"{name} must have dtype {dtype}, got {t.dtype}", TypeError)
    if ndim is not None and t.dim() != ndim:
        fail(op, f"{name} must be {ndim}-D, got {t.dim()}-D with shape {tuple(t.shape)}")


def check_same_device(op: str, **tensors: torch.Tensor) -> None:
    it = iter(tensors.values())
    first = next(it).device
    if any(t.device != first for t in it):  # the common case stays a few comparisons (per-call cost)
        listing = ", ".join(f"{n} on {t.device}" for n, t in tensors.items())
        fail(op, f"all tensors must be on one device; got {listing}")
