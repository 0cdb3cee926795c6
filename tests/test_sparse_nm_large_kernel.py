"""The large-M C++ N:M kernel (csrc/sparse_nm_large*.cpp, ``llmaccel.sparsity.cpu_nm_large``) against float64
dense math on the pruned weight, for every ISA variant this CPU runs: patterns 2:4, 1:2, 4:8 and 3:7 (a
padded tail group), odd K / N / M (panel tails of the 48-row panels), fp32 and int8 values, bias, strided x,
bit-identical results for any thread count, bad arguments raising with the op and the argument named, and
the ``sparse_linear`` op's cpp backend choosing it for large M.
"""

import functools

import pytest
import torch

import llmaccel
from llmaccel import backends
from llmaccel._ext import ext
from llmaccel.ops._cpp_views import view
from llmaccel.ops import sparse_linear_routes
from llmaccel import sparse_linear_fields
from llmaccel.sparsity import NMPackedWeight, prune
from llmaccel.sparsity.cpu_nm_large import nm_large_linear_raw

from cpp_calls import sparse_nm_raw_2_4

ALL_VARIANTS = [r["variant"] for r in ext().variant_table() if r["family"] == "sparse_nm_large"]
AVAILABLE = llmaccel.cpu_info()["available_variants"]["sparse_nm_large"]
VARIANTS = [pytest.param(v, id=v) for v in ALL_VARIANTS]
QUANTIZE = [pytest.param(None, id="fp32"), pytest.param("int8", id="int8")]


def _variant(v):
    if v not in AVAILABLE:
        pytest.skip(f"variant {v} does not run here (available: {AVAILABLE})")
    return v


@functools.lru_cache(maxsize=None)
def _packed(N, K, pattern, quantize=None, seed=0):
    g = torch.Generator().manual_seed(seed * 1000003 + N * 7919 + K * 31 + len(pattern))
    w = torch.randn(N, K, generator=g)
    return NMPackedWeight.from_dense(w, prune(w, pattern), pattern, quantize=quantize)


def _run(x, packed, bias, variant, nthreads=None):
    before = torch.get_num_threads()
    if nthreads:
        torch.set_num_threads(nthreads)
    try:
        return nm_large_linear_raw(x, packed.values, packed.indices, packed.scale if packed.quantized else None,
                                   bias, packed.n, packed.m, variant)
    finally:
        torch.set_num_threads(before)


def _check(y, x, packed, bias):
    """|y - ref| <= 1e-5 * (sum_k |x||w| + |bias|) + K 2^-149, ref = x @ W.T + bias in float64 on the pruned
    (int8: exactly dequantized) weight."""
    w = packed.to_dense().double()
    ref = x.double() @ w.T
    mag = x.double().abs() @ w.abs().T
    if bias is not None:
        ref, mag = ref + bias.double(), mag + bias.double().abs()
    assert y.dtype == torch.float32 and y.shape == ref.shape
    assert torch.isfinite(y).all()
    err = (y.double() - ref).abs()
    bad = err > 1e-5 * mag + x.shape[1] * 2.0 ** -149
    assert not bad.any(), f"{int(bad.sum())} outputs off; worst err {float(err.max()):.3g}"


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("quantize", QUANTIZE)
@pytest.mark.parametrize("pattern", ["2:4", "1:2", "4:8", "3:7"])
@pytest.mark.parametrize("K", [1, 3, 17, 113, 1000])
def test_against_float64(variant, quantize, pattern, K):
    v = _variant(variant)
    n, m = (int(s) for s in pattern.split(":"))
    if K < n:
        pytest.skip("fewer columns than kept slots")
    for N in (1, 3, 17, 100):
        packed = _packed(N, K, pattern, quantize)
        bias = torch.randn(N)
        for M in (1, 3, 17, 100, 513):
            if M == 513 and N < 17:
                continue  # the 513-row panel tail is covered at N = 17 and 100
            x = torch.randn(M, K)
            _check(_run(x, packed, bias, v), x, packed, bias)
        x = torch.randn(49, K)
        _check(_run(x, packed, None, v), x, packed, None)


@pytest.mark.parametrize("variant", VARIANTS)
def test_large_k_spans_many_k_blocks(variant):
    """K = 4100: 32 K blocks of 128 columns plus a partial one; N not a multiple of the item's 64 channels."""
    v = _variant(variant)
    packed = _packed(70, 4100, "2:4")
    x, bias = torch.randn(50, 4100), torch.randn(70)
    _check(_run(x, packed, bias, v), x, packed, bias)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("quantize", QUANTIZE)
def test_strided_x(variant, quantize):
    v = _variant(variant)
    N, K = 37, 1000
    packed = _packed(N, K, "2:4", quantize)
    bias = torch.randn(N)
    big = torch.randn(120, 2 * K + 8)
    for name, x in {"row stride > K": big[:, 3:3 + K], "column stride 2": big[:, 1:1 + 2 * K:2],
                    "transposed": torch.randn(K, 60).t(), "expanded rows": torch.randn(1, K).expand(50, K)}.items():
        _check(_run(x, packed, bias, v), x, packed, bias)


@pytest.mark.parametrize("variant", VARIANTS)
def test_padding_columns_are_never_read(variant):
    """3:7 at K = 1000 pads the last group past K: an inf placed there (a wider x, sliced) never reaches y,
    and an inf at a kept column reaches only the outputs whose row keeps it."""
    v = _variant(variant)
    N, K = 17, 1000
    packed = _packed(N, K, "3:7")
    wide = torch.randn(60, K + 8)
    wide[:, K:] = float("inf")
    x = wide[:, :K]
    _check(_run(x, packed, None, v), x, packed, None)
    x2 = torch.randn(60, K)
    x2[5, 10] = float("inf")
    y = _run(x2, packed, None, v)
    keeps = packed.to_dense()[:, 10] != 0
    assert torch.isinf(y[5, keeps]).all() and torch.isfinite(y[5, ~keeps]).all()
    assert torch.isfinite(y[torch.arange(60) != 5]).all()


def _bits(t):
    return t.view(torch.int32)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("quantize", QUANTIZE)
@pytest.mark.parametrize("pattern,M,K,N", [("2:4", 100, 1000, 300), ("3:7", 513, 113, 17), ("4:8", 49, 4100, 130)])
def test_bit_identical_for_any_thread_count(variant, quantize, pattern, M, K, N):
    v = _variant(variant)
    packed = _packed(N, K, pattern, quantize)
    x, b = torch.randn(M, K), torch.randn(N)
    first = _run(x, packed, b, v, 1)
    _check(first, x, packed, b)
    for nth in (2, 3, 7):
        assert torch.equal(_bits(_run(x, packed, b, v, nth)), _bits(first)), nth


def test_variants_and_cpu_info():
    assert ALL_VARIANTS == ["avx512", "avx2", "generic"]
    d = llmaccel.cpu_info()["ops"]["sparse_nm_large_linear"]
    assert d["family"] == "sparse_nm_large" and d["variant"] == AVAILABLE[0]


def _raw(**over):
    """A valid raw call (M=2, N=5, K=12, 2:4, fp32 values), with some arguments replaced."""
    packed = _packed(5, 12, "2:4")
    return (*sparse_nm_raw_2_4("sparse_nm_large_linear", packed, **over), packed)


@pytest.mark.parametrize("over,msg", [
    (dict(variant="sse9"), r"unknown variant 'sse9' \(known: avx512, avx2, generic\)"),
    (dict(**{"x.sizes": (-1, 12)}), r"x has a negative size \(-1\)"),
    (dict(**{"x.sizes": (2, -3)}), r"x has a negative size \(-3\)"),
    (dict(n=4, m=4), r"pattern n:m = 4:4 must have 1 <= n < m <= 256"),
    (dict(**{"x.sizes": (2, 16)}), r"values must have shape \[5, 8\] \(from the other tensors\), got \[5, 6\]"),
    (dict(**{"indices.strides": (1, 1)}), r"indices_sn \(the row stride of the packed indices, bytes\) = 1"),
    (dict(**{"x.addr": 0}), r"x is a null pointer"),
    (dict(**{"y.strides": (4, 1)}), r"y rows overlap \(y_sm = 4 < N = 5\)"),
    (dict(nthreads=0), r"nthreads must be >= 1, got 0"),
    (dict(**{"values.dtype": "int8"}), r"scale is None, but int8 values need"),
])
def test_raw_binding_rejects_bad_arguments(over, msg):
    with pytest.raises(ValueError, match=r"^llmaccel::sparse_nm_large_linear: " + msg):
        _raw(**over)


def test_raw_binding_valid_call():
    y, x, b, packed = _raw()
    _check(y, x, packed, b)


def test_op_runs_it_for_large_m_on_cpp(monkeypatch):
    """The sparse_linear op: past the small-M kernel's crossover the cpp backend takes route 'nm_large' (where
    it was not measured to lose to dense: NM_LARGE_LOSES_TO_DENSE, emptied here), and its result, backend
    forced, is the large kernel's."""
    monkeypatch.setattr(sparse_linear_routes, "NM_LARGE_LOSES_TO_DENSE", frozenset())
    N, K = 40, 200
    packed = _packed(N, K, "2:4")
    bias = torch.randn(N)
    cross, _ = sparse_linear_routes.crossover("nm", "sparse_nm")
    for M in (cross.limit(0.5) + 1, 513):
        x = torch.randn(M, K)
        fields = sparse_linear_fields(packed)
        ex = backends.explain("sparse_linear", x, *fields, bias)
        assert ex.backend == "cpp" and "route 'nm_large'" in str(ex), ex
        with backends.use("cpp"):
            y = llmaccel.sparse_linear(x, *fields, bias)
        _check(y, x, packed, bias)
        assert torch.equal(y, _run(x, packed, bias, ""))
    x3 = torch.randn(3, 20, K)  # leading dims: 60 rows
    with backends.use("cpp"):
        y3 = llmaccel.sparse_linear(x3, *sparse_linear_fields(packed), bias)
    assert y3.shape == (3, 20, N)
    _check(y3.reshape(-1, N), x3.reshape(-1, K), packed, bias)


def test_k_zero_gives_the_bias():
    b = torch.randn(5)
    y = torch.full((3, 5), float("nan"))
    ext().sparse_nm_large_linear(view(torch.empty(3, 0)), view(torch.empty(5, 0)),
                                 view(torch.empty(5, 0, dtype=torch.uint8)), None, view(b), view(y), 2, 4, 2, "")
    assert torch.equal(y, b.expand(3, 5))
