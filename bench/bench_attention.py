"""attention: llmaccel.attention against F.scaled_dot_product_attention (fp32, CPU).

Cases (prefill shapes, GQA decode over rotating KV caches, forward+backward)
live in llmaccel/bench/cases_attention.py; outputs are checked against SDPA
once per case before any timing.

    pytest bench/bench_attention.py --benchmark-only
"""

import pytest

from _suite import case_names, run

OP = "attention"


@pytest.mark.parametrize("impl", ["llmaccel", "peer"])
@pytest.mark.parametrize("name", case_names(OP))
def test_attention(benchmark, name, impl):
    run(benchmark, OP, name, impl)
