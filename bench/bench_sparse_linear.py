"""sparse_linear: llmaccel.sparse_linear (2:4 fp32, N:M packed) stacks against dense fp32 F.linear holding the same
pruned weights.

Each case times a pass through a stack of layers (llmaccel/bench/cases_sparse_linear.py); the result is checked
against the dense pruned stack once per case before any timing.

    pytest bench/bench_sparse_linear.py --benchmark-only
"""

import pytest

from _suite import case_names, run

OP = "sparse_linear"


@pytest.mark.parametrize("impl", ["llmaccel", "peer"])
@pytest.mark.parametrize("name", case_names(OP))
def test_sparse_linear(benchmark, name, impl):
    run(benchmark, OP, name, impl)
