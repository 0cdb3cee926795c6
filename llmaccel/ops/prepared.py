"""A layer's prepared op call: the weight-side arguments validated and the backend chosen once, so that a
decode step's call costs its kernel plus a few checks on ``x``.

Why: at M = 1 a layer's kernel streams its weight and evicts the Python code and data of the call that
follows, so the public road (the op's full argument check, the custom-op boundary test, the dispatcher's
selection, the arguments object) costs far more than on a warm loop.  Measured on the 2-core AVX2 EPYC
(seventh session), 8 Llama-style layers (hidden 2048, GQA 32/8, intermediate 5632: 56 int8 Linears) at
M = 1: 24.4 ms through ``Int8Linear`` against 19.1 ms calling the C++ kernel directly, ~96 us per call.

What runs is unchanged: the same backend implementation the dispatcher picks, on the same arguments
object the op's check builds.  Only repeating the check and the selection is skipped, and only while
nothing could change their outcome; otherwise :meth:`PreparedCall.__call__` returns None and the caller
takes the public road:

* the weight-side tensors are the same objects at the same version counters as when prepared (the check
  validated them; ``load_state_dict`` / ``copy_`` bump the version); a layer holding an inference tensor
  (no version counter: ``llmaccel._tensor_version``) always takes the public road;
* the backend request is still ``"auto"`` and the choice was made for this device;
* ``x`` is a plain CPU float32 tensor with the prepared ``K`` and ``1 <= M <= max_rows`` rows (the
  selection was checked at both ends of that range), and nothing needs the custom-op boundary (autograd
  for ``x`` or for any weight-side tensor, such as a trainable bias,
  ``torch.compile`` / tracing, the profiler, dispatch or function modes, tensor subclasses: ``_op_boundary_needed``).
"""

from __future__ import annotations

import weakref
from typing import Any, Optional

import torch
from torch import Tensor

from .. import backends
from .._tensor_version import version

__all__ = ["PreparedCall", "call_prepared"]


class PreparedCall:
    """``op(x, *fixed)`` for one layer's fixed arguments ``fixed`` (the op's arguments after ``x``)."""

    __slots__ = ("_op", "_fixed", "_tensors", "_versions", "_impl", "_run", "_finish", "_K", "_max_rows", "_device")

    def __init__(self, op, fixed: tuple, K: int, device: torch.device, impl, max_rows: int):
        self._op = op
        self._fixed = fixed
        self._versions = tuple(version(t) if isinstance(t, Tensor) else None for t in fixed)
        self._tensors = tuple(t for t in fixed if isinstance(t, Tensor))  # for the boundary test (grad, types)
        # An inference tensor (made under torch.inference_mode) has no version counter, so an in-place change
        # to it could not be seen: such a layer is refused and takes the public road, which re-checks it.
        if any(isinstance(t, Tensor) and v is None for t, v in zip(fixed, self._versions)):
            impl = None
        self._impl = impl
        # An implementation may bind its weight-side work once (``impl.prepare(*fixed) -> run(x)``): the
        # C++ one resolves pointers, packed weights and contiguity there.
        prepare = getattr(impl, "prepare", None)
        self._run = prepare(*fixed) if prepare is not None else None  # impl None: a refusal (see build)
        self._finish = op.spec.finish
        self._K = K
        self._max_rows = max_rows
        self._device = device

    @staticmethod
    def build(op, fixed: tuple, K: int, device: torch.device, max_rows: int = 64) -> Optional["PreparedCall"]:
        """Validate ``fixed`` with the op's own check (on probe inputs of 1 and ``max_rows`` float32 rows)
        and pick the backend.  A *refusal* (a call that always returns None, kept until ``fixed`` changes, so
        that such a layer does not pay for this on every call) where the op's prepare step would change the
        arguments (a per-call choice such as ``act="auto"``), the choice differs between the probes, or the
        check raises (the public road then raises the same error for the real call).  None, kept nowhere,
        while the backend request is not ``"auto"`` (a passing state)."""
        if device.type != "cpu" or backends.current() != "auto":
            return None
        impl = None
        try:
            for m in (1, max_rows):
                args = op.spec.check(torch.empty((m, K), dtype=torch.float32, device=device), *fixed)
                if op.spec.prepare is not None and op.spec.prepare(args)[0] is not args:
                    impl = None
                    break
                chosen = op.dispatch.select(args)
                if impl is not None and chosen is not impl:
                    impl = None
                    break
                impl = chosen
        except Exception:  # bad weights: the public road raises it, with the real x
            impl = None
        return PreparedCall(op, fixed, K, device, impl, max_rows)

    def matches(self, fixed: tuple) -> bool:
        """Whether ``fixed`` are the prepared arguments, unmodified."""
        mine = self._fixed
        if len(fixed) != len(mine):
            return False
        for a, b, v in zip(fixed, mine, self._versions):
            if a is not b:
                if isinstance(a, Tensor) or isinstance(b, Tensor) or a != b:
                    return False
            elif v is not None and a._version != v:  # v: a normal tensor at build (version()), so still one
                return False
        return True

    def __call__(self, x: Any) -> Optional[Tensor]:
        """The op's result for ``x``, or None when ``x`` or the process state needs the public road."""
        if self._impl is None:  # a refusal
            return None
        # is_cpu rather than a device comparison (a torch.device made per call): build() prepares CPU calls only.
        if (type(x) is not Tensor or x.dtype is not torch.float32 or not x.is_cpu or x.dim() == 0
                or x.shape[-1] != self._K):
            return None
        rows = x.numel() // max(self._K, 1)
        if (not 1 <= rows <= self._max_rows or backends.current() != "auto"
                or backends._op_boundary_needed((x, *self._tensors))):
            return None
        run = self._run
        out = run(x) if run is not None else self._impl(self._op.pack((x, *self._fixed)))
        return out if self._finish is None else self._finish(out)


# One prepared call per layer, in a weak map: never in the module's state, pickle or deep copies.
_calls: "weakref.WeakKeyDictionary[torch.nn.Module, PreparedCall]" = weakref.WeakKeyDictionary()


def call_prepared(layer: torch.nn.Module, op, fixed: tuple, K: int, x: Any, max_rows: int = 64) -> Optional[Tensor]:
    """``op(x, *fixed)`` through ``layer``'s prepared call (built, or rebuilt when ``fixed`` changed), or None
    where the public road must run it."""
    if torch.compiler.is_compiling():  # traced code takes the op road (dynamo cannot trace the weak map)
        return None
    call = _calls.get(layer)
    if call is None or call._op is not op or not call.matches(fixed):
        if type(x) is not Tensor or x.device.type != "cpu":
            return None
        call = PreparedCall.build(op, fixed, K, x.device, max_rows=max_rows)
        if call is None:
            return None
        _calls[layer] = call
    return call(x)
