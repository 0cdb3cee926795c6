"""Benchmark cases: one registry, keyed by op, shared by every front end.

``python -m llmaccel.bench`` (:mod:`llmaccel.bench.cli`), the pytest-benchmark
suites in ``bench/`` and ``bench/gpu_check.py`` all draw their cases from
:data:`REGISTRY`, so a shape is defined once.

A :class:`Case` names an op, a shape and a device, says what the peer is,
and knows how to build its inputs.  ``case.setup(device)`` returns a
:class:`Bench` that unpacks as ``ours_fn, peer_fn, work = case.setup(dev)``:

* ``ours_fn(i)`` / ``peer_fn(i)`` run llmaccel and the peer on input set
  ``i % bench.n_sets`` (see :mod:`llmaccel.bench.timing` for why inputs
  rotate);
* ``work`` (:class:`Work`) holds the operation count (for GOP/s) and/or the
  bytes streamed (for GB/s) of one call.

The :class:`Bench` also carries ``args(i)`` (the op's arguments for call
``i``, used with :func:`llmaccel.backends.explain`) and :meth:`Bench.verify`,
which compares ours with the peer on every input set before any timing.

The types live in :mod:`llmaccel.bench.case`; each op's cases in a ``cases_<op>.py`` module that lists them
in its ``CASES`` and imports only ``case.py``.  This module, at the bottom of the import graph, registers
every module's ``CASES`` in order.  Adding cases for another op (sparse GEMM...)::

    # llmaccel/bench/cases_my_op.py
    CASES = []
    def _build_my_case(case, device): ... return Bench(ours, peer, work, args, n_sets)
    CASES.append(Case(op="my_op", name="prefill", shape="M=512 K=4096 N=4096", device="cpu",
                      peer="torch.mm", peer_description="...", description="...", build=_build_my_case))

and its module name in ``_CASE_MODULES`` below.
"""

from __future__ import annotations

import importlib
from typing import Iterable, Optional

from .case import Bench, Case, CaseMismatch, Work, exact_check, random_int8_nonzero  # noqa: F401  (re-exported)

__all__ = [
    "Work", "Bench", "Case", "CaseMismatch", "REGISTRY", "register", "select", "get", "ops",
    "exact_check", "random_int8_nonzero",
]


# --------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------

REGISTRY: dict[str, list[Case]] = {}


def register(case: Case) -> Case:
    """Add ``case`` under ``REGISTRY[case.op]``; (op, name, device) must be unique."""
    cases = REGISTRY.setdefault(case.op, [])
    if any(c.key == case.key for c in cases):
        raise ValueError(f"benchmark case {case.key} is already registered")
    cases.append(case)
    return case


def ops() -> list[str]:
    return list(REGISTRY)


def select(ops: Optional[Iterable[str]] = None, devices: Optional[Iterable[str]] = None,
           names: Optional[Iterable[str]] = None) -> list[Case]:
    """Registered cases filtered by op, device and case name (None: no filter), in registration order."""
    ops_ = set(ops) if ops else None
    devs = set(devices) if devices else None
    names_ = set(names) if names else None
    unknown = (ops_ or set()) - set(REGISTRY)
    if unknown:
        raise ValueError(f"unknown op(s) {', '.join(sorted(unknown))}; known: {', '.join(REGISTRY)}")
    return [c for op, cases in REGISTRY.items() if ops_ is None or op in ops_
            for c in cases
            if (devs is None or c.device in devs) and (names_ is None or c.name in names_)]


def get(op: str, name: str, device: str = "cpu") -> Case:
    for c in REGISTRY.get(op, []):
        if c.name == name and c.device == device:
            return c
    raise KeyError(f"no benchmark case {op}/{name}/{device}")


# --------------------------------------------------------------------------
# The case modules, registered in this order (the order of the tables)
# --------------------------------------------------------------------------

_CASE_MODULES = ("cases_int8_mm", "cases_int8_linear", "cases_int8_linear_cuda", "cases_attention",
                 "cases_attention_cuda", "cases_sparse_linear")

for _name in _CASE_MODULES:
    for _case in importlib.import_module(f"{__package__}.{_name}").CASES:
        register(_case)
