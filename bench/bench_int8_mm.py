"""int8_mm: llmaccel.int8_mm against torch._int_mm on the CPU cases of llmaccel.bench.cases.

One test per case, parametrized over the implementation; both impls of a case
share the inputs and walk the same rotation of input sets (call k uses set
k % n_sets), so the decode case streams its 8 x 16 MB weights from memory.
Correctness (torch.equal on every input set) is checked once per case before
any timing.

    pytest bench/bench_int8_mm.py --benchmark-only
"""

from __future__ import annotations

import itertools

import pytest

from llmaccel.bench import cases

OP = "int8_mm"
IMPLS = ["llmaccel", "torch._int_mm"]

_ready: dict[str, cases.Bench] = {}


def _bench(name: str) -> cases.Bench:
    """The case's inputs, built and verified once; only one case is kept alive at a time."""
    if name not in _ready:
        _ready.clear()
        bench = cases.get(OP, name, "cpu").setup("cpu")
        bench.verify()
        _ready[name] = bench
    return _ready[name]


def _run(benchmark, name: str, impl: str) -> None:
    case = cases.get(OP, name, "cpu")
    bench = _bench(name)
    fn = bench.ours if impl == "llmaccel" else bench.peer
    counter = itertools.count()
    benchmark.extra_info.update(op=OP, case=name, shape=case.shape, impl=impl, n_sets=bench.n_sets,
                                backend=case.backend(bench) if impl == "llmaccel" else case.peer)
    out = benchmark(lambda: fn(next(counter)))
    assert out.shape[1] == int(case.shape.split("N=")[1])
    if benchmark.stats is not None:  # None under --benchmark-disable
        median = benchmark.stats.stats.median
        benchmark.extra_info.update({unit: round(v, 2) for unit, v in bench.work.rates(median).items()})


@pytest.mark.benchmark(group="int8_mm-prefill")
@pytest.mark.parametrize("impl", IMPLS)
def test_prefill(benchmark, impl):
    _run(benchmark, "prefill", impl)


@pytest.mark.benchmark(group="int8_mm-mlp-up")
@pytest.mark.parametrize("impl", IMPLS)
def test_mlp_up(benchmark, impl):
    _run(benchmark, "mlp-up", impl)


@pytest.mark.benchmark(group="int8_mm-decode")
@pytest.mark.parametrize("impl", IMPLS)
def test_decode(benchmark, impl):
    _run(benchmark, "decode", impl)


def test_cases_covered():
    """Every CPU int8_mm case in the registry has a benchmark test above."""
    names = {c.name for c in cases.select(ops=[OP], devices=["cpu"])}
    assert names == {"prefill", "mlp-up", "decode"}
