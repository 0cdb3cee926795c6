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

Adding cases for another op (attention, int8_linear...)::

    def _build_my_case(case, device): ... return Bench(ours, peer, work, args, n_sets)
    register(Case(op="attention", name="prefill", shape="B=1 H=32 S=2048 D=128", device="cpu",
                  peer="F.scaled_dot_product_attention", peer_description="...", build=_build_my_case,
                  check=allclose_check(atol=..., rtol=...)))
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Iterable, Iterator, Optional

import torch

__all__ = [
    "Work", "Bench", "Case", "CaseMismatch", "REGISTRY", "register", "select", "get", "ops",
    "exact_check", "random_int8_nonzero",
]


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
# Inputs
# --------------------------------------------------------------------------

def random_int8_nonzero(shape: tuple[int, ...], generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """Uniform int8 over [-128, 127] without 0 (no all-zero shortcut, extremes included)."""
    x = torch.randint(-128, 127, shape, dtype=torch.int8, generator=generator, device=device)  # [-128, 126]
    x += (x >= 0).to(torch.int8)                                                              # 0..126 -> 1..127
    return x


def _generator(device: torch.device, seed: int) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


# --------------------------------------------------------------------------
# int8_mm
# --------------------------------------------------------------------------

_INT8_MM_PEER = {
    "cpu": ("torch._int_mm on CPU tensors: PyTorch's int8 x int8 -> int32 GEMM, same contract as "
            "llmaccel.int8_mm (torch 2.13 CPU builds run oneDNN's s8s8s32 gemm, per ONEDNN_VERBOSE=1)"),
    "cuda": ("torch._int_mm on CUDA tensors: PyTorch's int8 x int8 -> int32 GEMM (cuBLASLt); "
             "needs M > 16 and K, N multiples of 8"),
}


def _int8_mm_builder(M: int, K: int, N: int, n_sets: int, stream_bytes: bool, seed: int = 0):
    def build(case: Case, device: torch.device) -> Bench:
        import llmaccel

        g = _generator(device, seed)
        acts = [random_int8_nonzero((M, K), g, device) for _ in range(n_sets)]
        # nn.Linear layout: a row-major [N, K] weight, used as b = w.t() ([K, N], column-major).
        weights = [random_int8_nonzero((N, K), g, device).t() for _ in range(n_sets)]
        n = n_sets
        int8_mm = llmaccel.int8_mm
        int_mm = torch._int_mm

        def ours(i: int):
            j = i % n
            return int8_mm(acts[j], weights[j])

        def peer(i: int):
            j = i % n
            return int_mm(acts[j], weights[j])

        def args(i: int):
            j = i % n
            return acts[j], weights[j]

        work = Work(ops=2.0 * M * N * K, bytes=float(K * N) if stream_bytes else None, bytes_what="weight")
        return Bench(ours, peer, work, args, n_sets)

    return build


def _int8_mm_case(name: str, M: int, K: int, N: int, device: str, n_sets: int, description: str,
                  stream_bytes: bool = False) -> Case:
    return Case(op="int8_mm", name=name, shape=f"M={M} K={K} N={N}", device=device, peer="torch._int_mm",
                peer_description=_INT8_MM_PEER[device], description=description,
                build=_int8_mm_builder(M, K, N, n_sets, stream_bytes))


# CPU.  Two input sets even for compute-bound shapes, so consecutive calls never share a weight.
register(_int8_mm_case(
    "prefill", 512, 4096, 4096, "cpu", 2,
    "prompt processing: 512 tokens through a 4096 x 4096 projection (compute-bound)"))
register(_int8_mm_case(
    "mlp-up", 64, 4096, 11008, "cpu", 2,
    "a 64-token batch through a LLaMA-7B MLP up-projection (45 MB weight)"))
register(_int8_mm_case(
    "decode", 1, 4096, 4096, "cpu", 8,
    "one token through 8 rotating 16 MB weights (128 MB, beyond the 32-36 MB L3), like a model's layers: "
    "memory-bound, GB/s of weight streamed is the figure of merit", stream_bytes=True))

# CUDA: only where a GPU exists.  torch._int_mm on CUDA needs M > 16, hence M=32 for decode-like work.
if torch.cuda.is_available():
    register(_int8_mm_case(
        "decode-m32", 32, 4096, 4096, "cuda", 8,
        "32 tokens (torch._int_mm's CUDA minimum is M=17) through 8 rotating 16 MB weights: memory-bound",
        stream_bytes=True))
    register(_int8_mm_case(
        "prefill", 512, 4096, 4096, "cuda", 2, "prompt processing: 512 tokens through a 4096 x 4096 projection"))
    register(_int8_mm_case(
        "mlp-up", 64, 4096, 11008, "cuda", 2, "a 64-token batch through a LLaMA-7B MLP up-projection"))
    register(_int8_mm_case("square-4096", 4096, 4096, 4096, "cuda", 2, "large square GEMM (compute-bound)"))
    register(_int8_mm_case("square-8192", 8192, 8192, 8192, "cuda", 1, "very large square GEMM (compute-bound)"))


# Cases of the other ops register themselves on import.
from . import cases_int8_linear  # noqa: E402,F401
from . import cases_attention  # noqa: E402,F401
