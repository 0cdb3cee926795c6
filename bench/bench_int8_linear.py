"""int8_linear: llmaccel.int8_linear stacks against their peers, on the CPU cases of llmaccel.bench.cases.

Each case times a pass through a stack of layers (see
llmaccel/bench/cases_int8_linear.py); the peer is named in the impl
parameter.  Accuracy (SQNR against the fp32 stack) is checked once per case
before any timing.

    pytest bench/bench_int8_linear.py --benchmark-only
"""

from __future__ import annotations

import itertools

import pytest

from llmaccel.bench import cases

OP = "int8_linear"
CASES = [c.name for c in cases.select(ops=[OP], devices=["cpu"])]

_ready: dict[str, cases.Bench] = {}


def _bench(name: str) -> cases.Bench:
    """The case's inputs, built and verified once; only one case is kept alive at a time."""
    if name not in _ready:
        _ready.clear()
        bench = cases.get(OP, name, "cpu").setup("cpu")
        bench.verify()
        _ready[name] = bench
    return _ready[name]


@pytest.mark.parametrize("impl", ["llmaccel", "peer"])
@pytest.mark.parametrize("name", CASES)
def test_int8_linear(benchmark, name, impl):
    case = cases.get(OP, name, "cpu")
    bench = _bench(name)
    fn = bench.ours if impl == "llmaccel" else bench.peer
    benchmark.group = f"{OP}-{name}"
    counter = itertools.count()
    benchmark.extra_info.update(op=OP, case=name, shape=case.shape,
                                impl=impl if impl == "llmaccel" else case.peer)
    out = benchmark(lambda: fn(next(counter)))
    assert out is not None and out.numel() > 0
    if benchmark.stats is not None:  # None under --benchmark-disable
        median = benchmark.stats.stats.median
        benchmark.extra_info.update({unit: round(v, 2) for unit, v in bench.work.rates(median).items()})
