"""Shared body of the per-op pytest-benchmark suites (bench_<op>.py).

Each suite parametrizes one test over the op's CPU cases in
llmaccel.bench.cases and over impl in {"llmaccel", "peer"}; a case's inputs
are built and verified (llmaccel against the peer) once, and only one case
is kept alive at a time, so memory-heavy cases do not pile up.
"""

from __future__ import annotations

import itertools

from llmaccel.bench import cases

_ready: dict[tuple[str, str], cases.Bench] = {}


def case_names(op: str) -> list[str]:
    return [c.name for c in cases.select(ops=[op], devices=["cpu"])]


def _bench(op: str, name: str) -> cases.Bench:
    if (op, name) not in _ready:
        _ready.clear()
        bench = cases.get(op, name, "cpu").setup("cpu")
        bench.verify()
        _ready[(op, name)] = bench
    return _ready[(op, name)]


def run(benchmark, op: str, name: str, impl: str) -> None:
    """Time llmaccel (impl="llmaccel") or the case's peer on rotating inputs; record throughput."""
    case = cases.get(op, name, "cpu")
    bench = _bench(op, name)
    fn = bench.ours if impl == "llmaccel" else bench.peer
    benchmark.group = f"{op}-{name}"
    counter = itertools.count()
    benchmark.extra_info.update(op=op, case=name, shape=case.shape, impl=impl if impl == "llmaccel" else case.peer)
    out = benchmark(lambda: fn(next(counter)))
    assert out is not None
    if benchmark.stats is not None:  # None under --benchmark-disable
        median = benchmark.stats.stats.median
        benchmark.extra_info.update({unit: round(v, 2) for unit, v in bench.work.rates(median).items()})
