"""Benchmark case types (Work, Bench, Case), the exact comparison, and the input helpers.

Every ``cases_<op>.py`` module builds on these; the registry (``cases.py``) collects their cases.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable, Iterator, Optional

import torch

__all__ = ["Work", "Bench", "Case", "CaseMismatch", "exact_check", "random_int8_nonzero", "seeded_generator"]


# --------------------------------------------------------------------------
# Data types
# --------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Work:
    """What one call does: ``ops`` arithmetic operations and/or ``bytes`` moved (``bytes_what`` says which).

    A case with ``bytes`` is memory-bound (its figure of merit is GB/s of
    ``bytes_what`` streamed); one without is compute-bound (``ops_unit``:
    ``"GOP/s"`` for integer work, ``"GFLOP/s"`` for floating point).  Only
    the meaningful rate is reported: :meth:`rates` gives GB/s for a
    memory-bound case and GOP/s or GFLOP/s for a compute-bound one.
    """

    ops: Optional[float] = None
    bytes: Optional[float] = None
    bytes_what: str = "weight"
    ops_unit: str = "GOP/s"

    @property
    def memory_bound(self) -> bool:
        return self.bytes is not None

    @property
    def unit(self) -> str:
        """The unit of this case's figure of merit: "GB/s", "GOP/s" or "GFLOP/s"."""
        return "GB/s" if self.memory_bound else self.ops_unit

    def rates(self, seconds: float) -> dict[str, float]:
        """The throughput of a call of ``seconds``, e.g. {"GB/s": 28.6} or {"GOP/s": 785.4} (empty if undefined)."""
        amount = self.bytes if self.memory_bound else self.ops
        if seconds <= 0 or amount is None:
            return {}
        return {self.unit: amount / seconds / 1e9}

    def format(self, seconds: float) -> str:
        """E.g. ``"21.3 GB/s"`` or ``"785.4 GOP/s"``."""
        return ", ".join(f"{v:,.1f} {k}" for k, v in self.rates(seconds).items())


class CaseMismatch(AssertionError):
    """llmaccel and the peer disagree on a case's inputs: its timings would be meaningless."""


def exact_check(ours: Any, peer: Any) -> Optional[str]:
    """None if ``ours`` and ``peer`` are identical tensors (dtype, shape, every value), else what differs."""
    if not isinstance(ours, torch.Tensor) or not isinstance(peer, torch.Tensor):
        return f"expected two tensors, got {type(ours).__name__} and {type(peer).__name__}"
    if ours.dtype != peer.dtype or ours.shape != peer.shape:
        return f"ours is {ours.dtype} {tuple(ours.shape)}, the peer {peer.dtype} {tuple(peer.shape)}"
    if torch.equal(ours, peer):
        return None
    diff = ours.to(torch.int64) - peer.to(torch.int64) if not ours.is_floating_point() else ours - peer
    bad = diff != 0
    n_bad = int(bad.sum())
    first = tuple(int(x) for x in bad.nonzero()[0])
    return (f"{n_bad} of {ours.numel()} elements differ (max |diff| {diff.abs().max().item()}); "
            f"first at {first}: ours {ours[first].item()}, peer {peer[first].item()}")


@dataclasses.dataclass
class Bench:
    """A case made ready on one device.  Unpacks as ``ours_fn, peer_fn, work``."""

    ours: Callable[[int], Any]
    peer: Callable[[int], Any]
    work: Work
    args: Callable[[int], tuple]        # the op's arguments for call i (for backends.explain)
    n_sets: int = 1                     # distinct input sets the index rotates through
    check: Callable[[Any, Any], Optional[str]] = exact_check
    label: str = ""

    def __iter__(self) -> Iterator[Any]:
        return iter((self.ours, self.peer, self.work))

    def verify(self, sync: Callable[[], Any] = lambda: None, budget_s: Optional[float] = None) -> int:
        """Run ours and the peer once on every input set; raise :class:`CaseMismatch` if any result differs.

        ``budget_s``: stop after the input set during which this many seconds passed (at least one set is
        checked): for smoke runs where a peer takes seconds per call.  Returns the number of sets checked.
        """
        t0 = time.perf_counter()
        for j in range(self.n_sets):
            o = self.ours(j)
            p = self.peer(j)
            sync()
            why = self.check(o, p)
            if why is not None:
                raise CaseMismatch(f"{self.label}: llmaccel and the peer disagree on input set {j}: {why}")
            if budget_s is not None and time.perf_counter() - t0 > budget_s:
                return j + 1
        return self.n_sets


@dataclasses.dataclass
class Case:
    """One benchmark: an op at one shape on one device, against one peer."""

    op: str
    name: str                     # short case name: "prefill", "decode", ...
    shape: str                    # human label: "M=512 K=4096 N=4096"
    device: str                   # "cpu" or "cuda"
    peer: str                     # peer name for tables: "torch._int_mm"
    peer_description: str         # what the peer is, in a sentence
    description: str              # what the case models
    build: Callable[["Case", torch.device], Bench] = dataclasses.field(repr=False)
    check: Callable[[Any, Any], Optional[str]] = dataclasses.field(default=exact_check, repr=False)

    @property
    def key(self) -> str:
        return f"{self.op}/{self.name}/{self.device}"

    def setup(self, device: Optional[torch.device | str] = None) -> Bench:
        """Allocate inputs on ``device`` (default: the case's) and return the ready :class:`Bench`."""
        dev = torch.device(device if device is not None else self.device)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        bench = self.build(self, dev)
        if bench.check is exact_check:  # a builder may install a case-specific check (approximate ops)
            bench.check = self.check
        bench.label = bench.label or f"{self.op} {self.name} ({self.shape}, {dev})"
        return bench

    def backend(self, bench: Bench) -> str:
        """The backend llmaccel runs for this case now, per :func:`llmaccel.backends.explain`."""
        from .. import backends

        return backends.explain(self.op, *bench.args(0)).backend or "none"


# --------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------

def random_int8_nonzero(shape: tuple[int, ...], generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """Uniform int8 over [-128, 127] without 0 (no all-zero shortcut, extremes included)."""
    x = torch.randint(-128, 127, shape, dtype=torch.int8, generator=generator, device=device)  # [-128, 126]
    x += (x >= 0).to(torch.int8)                                                              # 0..126 -> 1..127
    return x


def smoke_layers(n_layers: int) -> int:
    """Layers a chained-layer case builds: ``n_layers``, or at most 2 under ``LLMACCEL_BENCH_SMOKE=1`` (the CI's
    untimed bench-smoke pass, which checks that every case builds, runs and verifies, not its speed: building
    and pruning 8 layers of 4096 x 4096 takes ~25 s a case there)."""
    return min(n_layers, 2) if os.environ.get("LLMACCEL_BENCH_SMOKE") == "1" else n_layers


def seeded_generator(device: torch.device, seed: int) -> torch.Generator:
    """A generator on ``device`` seeded with ``seed`` (each case draws its inputs from its own)."""
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g
