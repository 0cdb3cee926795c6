"""int8_linear: llmaccel.int8_linear stacks against their peers (fp32 F.linear, torch.ao dynamic int8, memcpy,
a plain read of the same packed weight bytes).

Each case times a pass through a stack of layers (llmaccel/bench/cases_int8_linear.py);
accuracy (SQNR against the fp32 stack) is checked once per case before any timing.

    pytest bench/bench_int8_linear.py --benchmark-only
"""

import pytest

from _suite import case_names, run

OP = "int8_linear"


@pytest.mark.parametrize("impl", ["llmaccel", "peer"])
@pytest.mark.parametrize("name", case_names(OP))
def test_int8_linear(benchmark, name, impl):
    run(benchmark, OP, name, impl)
