"""The C++ N:M-sparse linear (csrc/sparse_nm*.cpp, ``llmaccel.sparsity.nm_linear_cpp``) against the float64
dense reference, for every ISA variant this CPU runs: shapes (M, K with tail groups, N), patterns 2:4 and
other N:M, bias, strided and batched x, extreme magnitudes, bit-identical results for 1/2/3 threads, and
bad input raising with the op and the argument named.
"""

import functools

import pytest
import torch

import llmaccel
from llmaccel._ext import ext
from llmaccel.sparsity import NMPackedWeight, prune, sparse_linear_reference
from llmaccel.sparsity.cpu_kernel import nm_linear_cpp

from cpp_calls import sparse_nm_cpp, sparse_nm_raw_2_4
from helpers import strided_x_cases

ALL_VARIANTS = [r["variant"] for r in ext().variant_table() if r["family"] == "sparse_nm"]
AVAILABLE = llmaccel.cpu_info()["available_variants"]["sparse_nm"]


def _variant(v):
    if v not in AVAILABLE:
        pytest.skip(f"variant {v} does not run here (the CPU or LLMACCEL_CPU_ISA; available: {AVAILABLE})")
    return v


VARIANTS = [pytest.param(v, id=v) for v in ALL_VARIANTS]


@functools.lru_cache(maxsize=None)
def _packed(N, K, pattern, seed=0, scale=1.0, quantize=None):
    g = torch.Generator().manual_seed(seed * 1000003 + N * 7919 + K)
    w = torch.randn(N, K, generator=g) * scale
    return NMPackedWeight.from_dense(w, prune(w, pattern), pattern, quantize=quantize)


QUANTIZE = [pytest.param(None, id="fp32"), pytest.param("int8", id="int8")]


def _check(y, x, packed, bias):
    """|y - ref| <= 1e-5 * (sum_k |x||w| + |bias|) + K * 2^-149 (subnormal rounding), ref in float64."""
    ref = sparse_linear_reference(x, packed, bias, dtype=torch.float64)
    mag = x.double().abs() @ packed.to_dense().double().abs().T
    if bias is not None:
        mag = mag + bias.double().abs()
    bound = 1e-5 * mag + packed.shape[1] * 2.0 ** -149
    assert y.dtype == torch.float32 and y.shape == ref.shape
    err = (y.double() - ref).abs()
    assert torch.isfinite(y).all()
    bad = err > bound
    assert not bad.any(), f"{int(bad.sum())} outputs off; worst err {float(err.max()):.3g}, bound there " \
                          f"{float(bound.flatten()[int(err.argmax())]):.3g}"


# ---------------------------------------------------------------------------------------------------- shapes

@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("quantize", QUANTIZE)
@pytest.mark.parametrize("K", [4, 8, 12, 100, 4096, 4100])
@pytest.mark.parametrize("N", [1, 3, 17, 113])
def test_2_4_shapes(variant, quantize, K, N):
    v = _variant(variant)
    packed = _packed(N, K, "2:4", quantize=quantize)
    bias = torch.randn(N)
    for M in (1, 2, 3, 5, 17):
        x = torch.randn(M, K)
        _check(nm_linear_cpp(x, packed, None, v), x, packed, None)
        _check(nm_linear_cpp(x, packed, bias, v), x, packed, bias)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("quantize", QUANTIZE)
@pytest.mark.parametrize("pattern", ["1:2", "1:4", "4:8", "3:5", "2:16", "5:32", "8:256"])
@pytest.mark.parametrize("K", [4, 12, 100, 4100])
def test_other_patterns(variant, quantize, pattern, K):
    v = _variant(variant)
    n, m = (int(s) for s in pattern.split(":"))
    if K < n:
        pytest.skip("fewer columns than kept slots")
    for N in (1, 17, 113):
        packed = _packed(N, K, pattern, quantize=quantize)
        bias = torch.randn(N)
        for M in (1, 3, 5):
            x = torch.randn(M, K)
            _check(nm_linear_cpp(x, packed, bias, v), x, packed, bias)
            _check(nm_linear_cpp(x, packed, None, v), x, packed, None)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("quantize", QUANTIZE)
@pytest.mark.parametrize("pattern", ["2:4", "4:8", "3:5"])
def test_groups_keeping_fewer_than_n_and_all_pruned(variant, quantize, pattern):
    """Spare slots (value 0, pointing at dropped or padding columns), and a weight with nothing kept."""
    v = _variant(variant)
    n, m = (int(s) for s in pattern.split(":"))
    N, K = 37, 4100 if m != 5 else 4103
    w = torch.randn(N, K)
    groups = -(-K // m)
    cols = torch.zeros(N, groups * m, dtype=torch.bool)
    kept = torch.randint(0, n + 1, (N, groups, 1))
    cols.view(N, groups, m)[...] = torch.rand(N, groups, m).argsort(-1) < kept
    keep = cols[:, :K]
    for mask in (keep, torch.zeros(N, K, dtype=torch.bool)):
        packed = NMPackedWeight.from_dense(w, mask, pattern, quantize=quantize)
        bias = torch.randn(N)
        for M in (1, 4, 6):
            x = torch.randn(M, K)
            _check(nm_linear_cpp(x, packed, bias, v), x, packed, bias)
    y = nm_linear_cpp(torch.randn(3, K), packed, None, v)
    assert torch.equal(y, torch.zeros(3, N))


# ---------------------------------------------------------------------------------------------------- layouts

@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("quantize", QUANTIZE)
def test_strided_and_batched_x(variant, quantize):
    v = _variant(variant)
    N, K = 113, 4100
    packed = _packed(N, K, "2:4", quantize=quantize)
    bias = torch.randn(N)
    for name, x in strided_x_cases(K).items():
        y = nm_linear_cpp(x, packed, bias, v)
        assert y.shape == (*x.shape[:-1], N), name
        _check(y.reshape(-1, N), x.reshape(-1, K), packed, bias)
    assert nm_linear_cpp(torch.randn(0, K), packed, bias, v).shape == (0, N)
    assert nm_linear_cpp(torch.randn(2, 0, K), packed, bias, v).shape == (2, 0, N)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("quantize", QUANTIZE)
def test_extreme_values(variant, quantize):
    v = _variant(variant)
    N, K = 17, 4100
    big_w = _packed(N, K, "2:4", seed=1, scale=1e-30, quantize=quantize)
    unit_w = _packed(N, K, "2:4", seed=2, quantize=quantize)
    for M in (1, 5):
        x = torch.randn(M, K)
        _check(nm_linear_cpp(x * 1e30, unit_w, None, v), x * 1e30, unit_w, None)          # ~1e32 sums
        _check(nm_linear_cpp(x * 1e30, big_w, None, v), x * 1e30, big_w, None)            # 1e30 * 1e-30
        _check(nm_linear_cpp(x * 1e-30, big_w, None, v), x * 1e-30, big_w, None)          # products underflow to 0
        sub = x * 1e-39                                                                   # subnormal x
        assert (sub[sub != 0].abs() < torch.finfo(torch.float32).tiny).all()
        _check(nm_linear_cpp(sub, unit_w, None, v), sub, unit_w, None)
        bias = torch.full((N,), 3e38)
        y = nm_linear_cpp(torch.zeros(M, K), unit_w, bias, v)
        assert torch.equal(y, bias.expand(M, N))


@pytest.mark.parametrize("variant", VARIANTS)
def test_inf_only_reaches_outputs_that_keep_its_column(variant):
    """x is read only at kept columns: an inf in a pruned column of x leaves the outputs finite."""
    v = _variant(variant)
    N, K = 17, 100
    packed = _packed(N, K, "2:4")
    mask = packed.mask()
    x = torch.randn(1, K)
    col = 37
    x[0, col] = float("inf")
    y = nm_linear_cpp(x, packed, None, v)[0]
    w = packed.to_dense()
    for r in range(N):
        if mask[r, col] and w[r, col] != 0:
            assert torch.isinf(y[r]) or torch.isnan(y[r])
        elif not mask[r, col]:
            assert torch.isfinite(y[r])


# ---------------------------------------------------------------------------------------------------- threads

def _bits(t):
    return t.view(torch.int32)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("quantize", QUANTIZE)
@pytest.mark.parametrize("pattern,M,K,N", [("2:4", 1, 4100, 300), ("2:4", 5, 1000, 113), ("2:4", 17, 100, 64),
                                           ("4:8", 3, 4100, 113), ("3:5", 2, 1001, 70)])
def test_bit_identical_for_1_2_3_threads(variant, quantize, pattern, M, K, N):
    v = _variant(variant)
    packed = _packed(N, K, pattern, quantize=quantize)
    x, b = torch.randn(M, K), torch.randn(N)
    first = sparse_nm_cpp(x, packed, b, v, 1)
    _check(first, x, packed, b)
    for nth in (2, 3, 1, 7):
        assert torch.equal(_bits(sparse_nm_cpp(x, packed, b, v, nth)), _bits(first)), nth
    for nth in (1, 2, 3):  # the wrapper, through torch's thread count
        before = torch.get_num_threads()
        torch.set_num_threads(nth)
        try:
            assert torch.equal(_bits(nm_linear_cpp(x, packed, b, v)), _bits(first)), nth
        finally:
            torch.set_num_threads(before)


# ---------------------------------------------------------------------------------------------------- errors

def test_cpu_info_lists_the_op():
    info = llmaccel.cpu_info()
    d = info["ops"]["sparse_nm_linear"]
    assert d["family"] == "sparse_nm" and d["variant"] == AVAILABLE[0] and d["why"].startswith(d["variant"] + ":")
    assert ALL_VARIANTS == ["avx512vbmi", "avx512", "avx2", "generic"]


def test_wrapper_rejects_bad_arguments():
    packed = _packed(5, 12, "2:4")
    x = torch.randn(2, 12)
    with pytest.raises(ValueError,
                       match=r"llmaccel::sparse_nm_linear: unknown variant 'sse9' \(known: avx512vbmi, avx512, avx2, generic\)"):
        nm_linear_cpp(x, packed, None, "sse9")
    with pytest.raises(ValueError, match="nm_linear_cpp: x must be float32"):
        nm_linear_cpp(x.double(), packed)
    with pytest.raises(ValueError, match=r"x's last dimension must be in_features = 12"):
        nm_linear_cpp(torch.randn(2, 13), packed)
    with pytest.raises(ValueError, match=r"bias must be a float32 CPU tensor of shape \[out_features\] = \[5\]"):
        nm_linear_cpp(x, packed, torch.randn(4))
    with pytest.raises(ValueError, match="bias must be a float32"):
        nm_linear_cpp(x, packed, torch.randn(5, dtype=torch.float64))
    with pytest.raises(TypeError, match="weight must be an NMPackedWeight"):
        nm_linear_cpp(x, packed.to_dense())
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        nm_linear_cpp(x.numpy(), packed)
    w = torch.randn(5, 12)
    h = NMPackedWeight.from_dense(w.half(), prune(w, "2:4"), "2:4")
    with pytest.raises(ValueError, match=r"values must be float32 \(or int8 with scales\), got torch.float16"):
        nm_linear_cpp(x, h)


def _raw(**over):
    """A valid raw call (M=2, N=5, K=12, 2:4, fp32 values), with some arguments replaced."""
    return sparse_nm_raw_2_4("sparse_nm_linear", _packed(5, 12, "2:4"), **over)[0]


@pytest.mark.parametrize("over,msg", [
    (dict(variant="sse9"), r"unknown variant 'sse9' \(known: avx512vbmi, avx512, avx2, generic\)"),
    (dict(**{"x.sizes": (-1, 12)}), r"x has a negative size \(-1\)"),
    (dict(**{"y.sizes": (2, -2)}), r"y has a negative size \(-2\)"),
    (dict(**{"x.sizes": (2, -3)}), r"x has a negative size \(-3\)"),
    (dict(n=4, m=4), r"pattern n:m = 4:4 must have 1 <= n < m <= 256"),
    (dict(n=0), r"pattern n:m = 0:4"),
    (dict(n=2, m=512), r"pattern n:m = 2:512"),
    (dict(**{"x.sizes": (2, 16)}), r"values must have shape \[5, 8\] \(from the other tensors\), got \[5, 6\]"),
    (dict(n=7, m=8), r"values must have shape \[5, 14\]"),
    (dict(n=1, m=4, **{"x.sizes": (2, 36), "values.sizes": (5, 9)}), r"indices must have shape \[5, 3\] \(from the "
                                                                     r"other tensors\), got \[5, 2\]"),
    (dict(**{"x.addr": 0}), r"x is a null pointer"),
    (dict(**{"values.addr": 0}), r"values is a null pointer"),
    (dict(**{"indices.addr": 0}), r"indices is a null pointer"),
    (dict(**{"y.addr": 0}), r"y is a null pointer"),
    (dict(**{"x.strides": (-12, 1)}), r"x has a negative stride"),
    (dict(**{"y.strides": (4, 1)}), r"y rows overlap \(y_sm = 4 < N = 5\)"),
    (dict(nthreads=0), r"nthreads must be >= 1, got 0"),
    (dict(**{"values.strides": (-1, 1)}), r"values_sn \(the row stride of values\) = -1"),
    (dict(**{"values.dtype": "int8"}), r"scale is None, but int8 values need float32 per-row scales \[N\]"),
    (dict(scale=(8, "float32", (5,), (1,))), r"scale must be None for float32 values"),
])
def test_raw_binding_rejects_bad_arguments(over, msg):
    with pytest.raises(ValueError, match=r"^llmaccel::sparse_nm_linear: " + msg):
        _raw(**over)


def test_raw_binding_overflow_and_valid_call():
    with pytest.raises(OverflowError, match=r"llmaccel::sparse_nm_linear: x: .*(overflow|beyond)"):
        _raw(**{"x.strides": (1 << 62, 1)})
    with pytest.raises(OverflowError, match=r"llmaccel::sparse_nm_linear: K = "):
        _raw(**{"x.sizes": (0, 1 << 60), "y.sizes": (0, 5), "values.sizes": (5, 1 << 59),
                "indices.sizes": (5, 1 << 57)})
    y = _raw()  # the defaults are consistent
    assert torch.isfinite(y).all()


def test_cap_refuses_avx2():
    from llmaccel import cpu

    if "avx2" not in AVAILABLE:
        pytest.skip("no AVX2 here")
    with cpu.cpu_isa("generic"):
        assert llmaccel.cpu_info()["ops"]["sparse_nm_linear"]["variant"] == "generic"
        with pytest.raises(ValueError, match=r"sparse_nm_linear: variant avx2 is above the cap"):
            _raw(variant="avx2")
        x = torch.randn(3, 100)
        packed = _packed(17, 100, "2:4")
        _check(nm_linear_cpp(x, packed), x, packed, None)
