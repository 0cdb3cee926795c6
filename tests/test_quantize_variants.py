"""quantize_per_token's C++ variants (csrc/quantize*.cpp: one row loop compiled per ISA unit).  Every
variant this CPU runs must give exactly the float64 reference's codes and scales, and exactly each other's,
on odd shapes, strided rows, extreme and non-finite rows."""

import pytest
import torch

import llmaccel
from llmaccel._ext import ext
from llmaccel.ops._cpp_views import view, view_or_none
from llmaccel.ops.quantize import quantize_per_token_reference

VARIANTS = llmaccel.cpu_info()["available_variants"].get("quantize_per_token", [])

pytestmark = pytest.mark.skipif(not VARIANTS, reason="needs the C++ extension")


def _run(x, variant, nthreads=2):
    M, K = x.shape
    q = torch.empty(M, K, dtype=torch.int8)
    s = torch.empty(M)
    ext().quantize_per_token(view(x), view(q), view(s), nthreads, variant)
    return q, s


def _inputs():
    g = torch.Generator().manual_seed(0)
    for M, K in [(1, 1), (3, 17), (17, 113), (113, 1000), (5, 4099)]:
        yield f"{M}x{K}", torch.randn(M, K, generator=g) * 3
    x = torch.randn(8, 300, generator=g)
    x[0] = 0.0                                   # all zero: scale 1, q 0
    x[1, 7] = 1e38                               # one huge value
    x[2] *= 1e-38                                # subnormal-scale row (the double-division path)
    x[3, 5] = float("nan")                       # non-finite rows: scale NaN, q 0
    x[4, 0] = float("-inf")
    x[5] = torch.arange(300, dtype=torch.float32) - 150.0 + 0.5  # exact ties at many steps
    yield "extremes", x
    yield "strided rows", (torch.randn(40, 257, generator=g) * 5)[:, :200]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("name, x", list(_inputs()), ids=[n for n, _ in _inputs()])
def test_every_variant_equals_the_reference_and_generic(variant, name, x):
    q, s = _run(x, variant)
    qr, sr = quantize_per_token_reference(x.contiguous())
    assert torch.equal(q, qr.to(torch.int8)), name
    assert torch.equal(s.isnan(), sr.isnan()) and torch.equal(s.nan_to_num(), sr.to(torch.float32).nan_to_num()), name
    qg, sg = _run(x, "generic", nthreads=1)
    assert torch.equal(q, qg) and torch.equal(s.view(torch.int32), sg.view(torch.int32)), name


def test_unknown_or_unavailable_variant_raises():
    x = torch.randn(2, 8)
    with pytest.raises(ValueError, match="quantize_per_token"):
        _run(x, "no-such-variant")


def test_public_op_runs_the_best_variant():
    info = llmaccel.cpu_info()["ops"]["quantize_per_token"]
    assert info["variant"] == VARIANTS[0]
    x = torch.randn(33, 70)
    q, s = llmaccel.quantize_per_token(x)
    qv, sv = _run(x, VARIANTS[0])
    assert torch.equal(q, qv) and torch.equal(s, sv)
