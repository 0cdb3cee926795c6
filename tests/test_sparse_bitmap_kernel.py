"""The C++ unstructured-sparse (bitmap) linear (csrc/sparse_bitmap*.cpp, ``llmaccel.sparsity.bitmap_linear_cpp``)
against the float64 dense math on the pruned weight, for every ISA variant this CPU runs: sparsities from 0.3
to 0.99 and fully pruned / fully dense rows, odd shapes, fp32 and int8 values, bias, strided and batched x,
bit-identical results for 1/2/3/7 threads, corrupt fields (bitmap and row_offsets that disagree) raising
ValueError without reading outside the buffers, bad raw arguments, and the ``sparse_linear`` op's cpp path.
"""

import functools

import pytest
import torch

import llmaccel
from llmaccel import backends
from cpp_calls import call_views
from llmaccel._ext import ext
from llmaccel.ops._cpp_views import view, view_or_none
from llmaccel.ops import sparse_linear_routes
from llmaccel.sparsity import BitmapWeight, prune, sparse_linear_reference
from llmaccel.sparsity.cpu_bitmap_index import bitmap_index_linear_raw, column_indices
from llmaccel.sparsity.cpu_bitmap import bitmap_linear_cpp

ALL_VARIANTS = [r["variant"] for r in ext().variant_table() if r["family"] == "sparse_bitmap"]
AVAILABLE = llmaccel.cpu_info()["available_variants"]["sparse_bitmap"]
VARIANTS = [pytest.param(v, id=v) for v in ALL_VARIANTS]
QUANTIZE = [pytest.param(None, id="fp32"), pytest.param("int8", id="int8")]


def _variant(v):
    if v not in AVAILABLE:
        pytest.skip(f"variant {v} does not run here (the CPU or LLMACCEL_CPU_ISA; available: {AVAILABLE})")
    return v


@functools.lru_cache(maxsize=None)
def _weight(N, K, sparsity, quantize=None, seed=0, rows=""):
    """A BitmapWeight of a random [N, K] weight pruned to ``sparsity`` (unstructured); ``rows`` "pd" makes row 0
    fully pruned and the last row fully dense."""
    g = torch.Generator().manual_seed(seed * 1000003 + N * 7919 + K * 31 + int(sparsity * 1000))
    w = torch.randn(N, K, generator=g)
    w[w == 0] = 1.0  # a kept weight is never 0 here, so a lost value cannot hide
    mask = prune(w, "unstructured", sparsity=sparsity)
    if "p" in rows:
        mask[0] = False
    if "d" in rows:
        mask[-1] = True
    return BitmapWeight.from_dense(w, mask, quantize=quantize)


def _check(y, x, weight, bias):
    """|y - ref| <= 1e-5 * (sum_k |x||w| + |bias|) + K * 2^-149, ref in float64 on the pruned (int8: the exactly
    dequantized) weight."""
    ref = sparse_linear_reference(x, weight, bias, dtype=torch.float64)
    mag = x.double().abs() @ weight.to_dense().double().abs().T
    if bias is not None:
        mag = mag + bias.double().abs()
    bound = 1e-5 * mag + weight.shape[1] * 2.0 ** -149
    assert y.dtype == torch.float32 and y.shape == ref.shape
    assert torch.isfinite(y).all()
    err = (y.double() - ref).abs()
    bad = err > bound
    assert not bad.any(), f"{int(bad.sum())} outputs off; worst err {float(err.max()):.3g}, bound there " \
                          f"{float(bound.flatten()[int(err.argmax())]):.3g}"


def _raw_call(x, wt, b, variant, nthreads):
    """The binding on a BitmapWeight with an explicit thread count (x [M, K], unit column stride)."""
    y = torch.full((x.shape[0], wt.shape[0]), float("nan"))
    ext().sparse_bitmap_linear(view(x), view(wt.values), view(wt.bitmap), view(wt.row_offsets), view_or_none(wt.scale),
                               view_or_none(b), view(y), nthreads, variant)
    return y


# ---------------------------------------------------------------------------------------------------- shapes

@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("quantize", QUANTIZE)
@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.9, 0.99])
@pytest.mark.parametrize("K", [1, 3, 17, 113, 1000])
def test_odd_shapes_and_sparsities(variant, quantize, sparsity, K):
    v = _variant(variant)
    for N in (1, 3, 17):
        wt = _weight(N, K, sparsity, quantize)
        bias = torch.randn(N)
        for M in (1, 2, 3, 4, 5, 17):
            x = torch.randn(M, K)
            _check(bitmap_linear_cpp(x, wt, None, v), x, wt, None)
            _check(bitmap_linear_cpp(x, wt, bias, v), x, wt, bias)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("quantize", QUANTIZE)
@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.9, 0.99])
@pytest.mark.parametrize("K", [64, 4096, 4100])
def test_long_rows_with_pruned_and_dense_rows(variant, quantize, sparsity, K):
    """Whole 64-column words (the vector path's unit), row 0 fully pruned, the last row fully dense (its values
    end the buffer: the bounded load), a tail of K % 8 columns."""
    v = _variant(variant)
    wt = _weight(37, K, sparsity, quantize, rows="pd")
    assert int(wt.row_offsets[1]) == 0 and int(wt.row_offsets[-1] - wt.row_offsets[-2]) == K
    bias = torch.randn(37)
    for M in (1, 2, 3, 4, 5, 17):
        x = torch.randn(M, K)
        _check(bitmap_linear_cpp(x, wt, bias, v), x, wt, bias)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("quantize", QUANTIZE)
def test_nothing_kept(variant, quantize):
    v = _variant(variant)
    w = torch.randn(5, 100)
    wt = BitmapWeight.from_dense(w, torch.zeros(5, 100, dtype=torch.bool), quantize=quantize)
    assert wt.values.numel() == 0
    bias = torch.randn(5)
    assert torch.equal(bitmap_linear_cpp(torch.randn(3, 100), wt, None, v), torch.zeros(3, 5))
    assert torch.equal(bitmap_linear_cpp(torch.randn(3, 100), wt, bias, v), bias.expand(3, 5))


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("quantize", QUANTIZE)
def test_strided_and_batched_x(variant, quantize):
    v = _variant(variant)
    N, K = 17, 1000
    wt = _weight(N, K, 0.5, quantize)
    bias = torch.randn(N)
    big = torch.randn(9, 2 * K + 8)
    cases = {
        "row stride > K": big[:, 3:3 + K],
        "column stride 2": big[:, 1:1 + 2 * K:2],
        "one strided row": big[4, 5:5 + K],
        "3-D batch": torch.randn(2, 3, K),
        "transposed": torch.randn(K, 5).t(),
        "transposed batch": torch.randn(3, 2, K).transpose(0, 1),
        "expanded (stride 0)": torch.randn(1, K).expand(4, K),
    }
    for name, x in cases.items():
        y = bitmap_linear_cpp(x, wt, bias, v)
        assert y.shape == (*x.shape[:-1], N), name
        _check(y.reshape(-1, N), x.reshape(-1, K), wt, bias)
    assert bitmap_linear_cpp(torch.randn(0, K), wt, bias, v).shape == (0, N)


# ---------------------------------------------------------------------------------------------------- threads

@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("quantize", QUANTIZE)
@pytest.mark.parametrize("M,K,N,sparsity", [(1, 4100, 300, 0.5), (5, 1000, 113, 0.9), (17, 113, 64, 0.3)])
def test_bit_identical_for_any_thread_count(variant, quantize, M, K, N, sparsity):
    v = _variant(variant)
    wt = _weight(N, K, sparsity, quantize)
    x, b = torch.randn(M, K), torch.randn(N)
    first = _raw_call(x, wt, b, v, 1)
    _check(first, x, wt, b)
    for nth in (2, 3, 7, 1):
        assert torch.equal(_raw_call(x, wt, b, v, nth).view(torch.int32), first.view(torch.int32)), nth


# ---------------------------------------------------------------------------------------------------- errors

def _corrupt_raw(variant="", m=3, **over):
    """A raw call on a valid 0.5-sparse 17 x 100 fp32 weight with some fields replaced (tensors kept alive), on
    m rows of x (m = 1: the AVX-512 unit's lockstep row groups)."""
    wt = _weight(17, 100, 0.5)
    x, y, b = torch.randn(m, 100), torch.empty(m, 17), torch.randn(17)
    t = dict(bitmap=wt.bitmap.clone(), values=wt.values, row_offsets=wt.row_offsets.clone())
    edit = over.pop("edit", None)
    if edit is not None:
        edit(t)
    call_views("sparse_bitmap_linear", dict(x=x, scale=None, bias=b, y=y, **t), dict(nthreads=2, variant=variant),
               **over)
    return y


def _shift_boundary(t):
    t["row_offsets"][5] += 1   # rows 4 and 5 still non-decreasing, but their counts disagree with the bitmap


def _extra_bit(t):
    row = t["bitmap"][3]
    row[row != 255] = 255      # row 3 now sets more bits than its offsets give it
    row[-1] = 0x0F             # (K = 100: only the low 4 bits of the last byte are columns)


def _bit_past_k(t):
    t["bitmap"][16, -1] |= 0x80  # column 103 >= K


def _drop_bits(t):
    t["bitmap"][16] = 0          # the last row keeps nothing, its offsets say otherwise


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("edit,msg", [
    (_shift_boundary, r"bitmap and row_offsets disagree at row 4"),
    (_extra_bit, r"bitmap and row_offsets disagree at row 3"),
    (_bit_past_k, r"bitmap and row_offsets disagree at row 16: .*bits past column K = 100"),
    (_drop_bits, r"bitmap and row_offsets disagree at row 16"),
    (lambda t: t["row_offsets"].__setitem__(9, 0), r"row_offsets must be non-decreasing: row_offsets\[9\] = 0 <"),
    (lambda t: t["row_offsets"].__setitem__(0, -4), r"row_offsets\[0\] = -4 is negative"),
    (lambda t: t["row_offsets"].__setitem__(17, 10 ** 6), r"row_offsets\[N\] = 1000000 is past the end of values"),
])
@pytest.mark.parametrize("m", [1, 3])
def test_corrupt_fields_raise_naming_them(variant, edit, msg, m):
    v = _variant(variant)
    with pytest.raises(ValueError, match=r"^llmaccel::sparse_bitmap_linear: " + msg):
        _corrupt_raw(v, m=m, edit=edit)


@pytest.mark.parametrize("variant", VARIANTS)
def test_corrupt_fields_through_the_op_raise(variant):
    """The op's cpp path trusts shapes only; the kernel catches offsets that disagree with the bitmap."""
    _variant(variant)
    wt = _weight(17, 100, 0.5)
    offsets = wt.row_offsets.clone()
    offsets[5] += 1
    with backends.use("cpp"), pytest.raises(ValueError, match="bitmap and row_offsets disagree at row 4"):
        llmaccel.sparse_linear(torch.randn(2, 100), wt.values, wt.bitmap, offsets, None, "bitmap", [])


@pytest.mark.parametrize("over,msg", [
    (dict(variant="sse9"), r"unknown variant 'sse9' \(known: avx512, avx2, generic\)"),
    (dict(**{"x.sizes": (-1, 100)}), r"x has a negative size \(-1\)"),
    (dict(**{"y.sizes": (3, -2)}), r"y has a negative size \(-2\)"),
    (dict(**{"x.sizes": (3, -3)}), r"x has a negative size \(-3\)"),
    (dict(**{"values.sizes": (-1,)}), r"values has a negative size \(-1\)"),
    (dict(**{"bitmap.strides": (12, 1)}), r"bitmap_sn \(the row stride of the bitmap, bytes\) = 12 is less than the "
                                          r"13 bytes"),
    (dict(**{"x.addr": 0}), r"x is a null pointer"),
    (dict(**{"values.addr": 0}), r"values is a null pointer"),
    (dict(**{"bitmap.addr": 0}), r"bitmap is a null pointer"),
    (dict(**{"row_offsets.addr": 0}), r"row_offsets is a null pointer"),
    (dict(**{"y.addr": 0}), r"y is a null pointer"),
    (dict(**{"x.strides": (-100, 1)}), r"x has a negative stride"),
    (dict(**{"y.strides": (4, 1)}), r"y rows overlap \(y_sm = 4 < N = 17\)"),
    (dict(nthreads=0), r"nthreads must be >= 1, got 0"),
    (dict(**{"values.dtype": "int8"}), r"scale is None, but int8 values need float32 per-row scales \[N\]"),
    (dict(scale=(8, "float32", (17,), (1,))), r"scale must be None for float32 values"),
])
def test_raw_binding_rejects_bad_arguments(over, msg):
    with pytest.raises(ValueError, match=r"^llmaccel::sparse_bitmap_linear: " + msg):
        _corrupt_raw(**over)


def test_raw_binding_overflow_and_valid_call():
    with pytest.raises(OverflowError, match=r"llmaccel::sparse_bitmap_linear: x: .*(overflow|beyond)"):
        _corrupt_raw(**{"x.strides": (1 << 62, 1)})
    with pytest.raises(OverflowError, match=r"llmaccel::sparse_bitmap_linear: K = "):
        _corrupt_raw(**{"x.sizes": (0, 1 << 60), "y.sizes": (0, 17), "bitmap.sizes": (17, 1 << 57)})
    assert torch.isfinite(_corrupt_raw()).all()  # the defaults are consistent


def test_wrapper_rejects_bad_arguments():
    wt = _weight(5, 12, 0.5)
    x = torch.randn(2, 12)
    with pytest.raises(ValueError, match=r"llmaccel::sparse_bitmap_linear: unknown variant 'sse9'"):
        bitmap_linear_cpp(x, wt, None, "sse9")
    with pytest.raises(ValueError, match="bitmap_linear_cpp: x must be float32"):
        bitmap_linear_cpp(x.double(), wt)
    with pytest.raises(ValueError, match=r"bitmap_linear_cpp: x's last dimension must be in_features = 12"):
        bitmap_linear_cpp(torch.randn(2, 13), wt)
    with pytest.raises(ValueError, match=r"bitmap_linear_cpp: bias must be a float32 CPU tensor of shape \[out_fe"):
        bitmap_linear_cpp(x, wt, torch.randn(4))
    with pytest.raises(TypeError, match="bitmap_linear_cpp: weight must be a BitmapWeight, got Tensor"):
        bitmap_linear_cpp(x, wt.to_dense())
    w = torch.randn(5, 12)
    half = BitmapWeight.from_dense(w.half(), prune(w, "unstructured", sparsity=0.5))
    with pytest.raises(ValueError, match=r"bitmap_linear_cpp: weight values must be float32 \(or int8 with sc"):
        bitmap_linear_cpp(x, half)


# ---------------------------------------------------------------------------------------------------- the op

def test_cpu_info_lists_the_op():
    d = llmaccel.cpu_info()["ops"]["sparse_bitmap_linear"]
    assert d["family"] == "sparse_bitmap" and d["variant"] == AVAILABLE[0] and d["why"].startswith(d["variant"] + ":")
    assert ALL_VARIANTS == ["avx512", "avx2", "generic"]


def _route_table(max_m):
    """CROSSOVER_M with every entry moved to ``max_m`` (so a test picks the route whatever was measured)."""
    return {key: sparse_linear_routes.Crossover(max_m, c.density, c.measured_on)
            for key, c in sparse_linear_routes.CROSSOVER_M.items()}


def _route(x, fields, bias=None):
    ex = backends.explain("sparse_linear", x, *fields, bias)
    assert ex.backend == "cpp", ex
    return " ".join(ex.notes).split("route ")[1].split(":")[0].strip("'")


@pytest.mark.parametrize("quantize", QUANTIZE)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("index", [False, True], ids=["bytes", "index"])
def test_op_cpp_backend_runs_the_bitmap_route(quantize, dtype, index, monkeypatch):
    """The byte kernel, or (at most 4 rows at this 10 % density) the column-index form, on the op's path."""
    assert ("bitmap", "avx2") in sparse_linear_routes.CROSSOVER_M  # the measured crossover is recorded
    monkeypatch.setattr(sparse_linear_routes, "CROSSOVER_M", _route_table(17))
    if not index:
        monkeypatch.setattr(sparse_linear_routes, "INDEX_MAX_DENSITY", 0.0)
    wt = _weight(17, 113, 0.9, quantize, rows="pd")
    fields = llmaccel.sparse_linear_fields(wt)
    bias = torch.randn(17)
    for lead in ((1,), (3,), (2, 5), (17,)):
        x = torch.randn(*lead, 113).to(dtype)
        rows = x.numel() // 113
        by_index = index and rows * wt.values.numel() / (17 * 113) <= sparse_linear_routes.index_max_work()
        assert _route(x, fields, bias) == ("bitmap_index" if by_index else "bitmap")
        with backends.use("cpp"):
            y = llmaccel.sparse_linear(x, *fields, bias)
        assert y.dtype == dtype and y.shape == (*lead, 17)
        if dtype == torch.float32:
            _check(y.reshape(-1, 17), x.reshape(-1, 113), wt, bias)
        else:  # the kernel's fp32 result rounded once to dtype
            x32 = x.reshape(-1, 113).float()
            if by_index:
                cols = column_indices(wt.bitmap, wt.row_offsets, 113, wt.values.numel())
                want = bitmap_index_linear_raw(x32, cols, wt.values, wt.row_offsets, wt.scale, bias).to(dtype)
            else:
                want = bitmap_linear_cpp(x32, wt, bias).to(dtype)
            assert torch.equal(y.reshape(-1, 17), want)


def test_op_routes_by_rows_and_density(monkeypatch):
    """Past the crossover the expand route runs; sparser weights keep the measured crossover, denser ones get
    a proportionally smaller one (sparse_linear_routes.bitmap_route); non-fp32 float values are refused."""
    monkeypatch.setattr(sparse_linear_routes, "CROSSOVER_M", {
        ("bitmap", "avx2"): sparse_linear_routes.Crossover(8, 0.5, "test")})
    # The AVX-512 unit's own limit (its gathers keep the index form ahead up to 8 rows at 10 %), then the default.
    assert sparse_linear_routes.index_max_work() == (0.8 if AVAILABLE[0] == "avx512" else 0.4)
    monkeypatch.setattr(sparse_linear_routes, "INDEX_MAX_WORK_BY_VARIANT", {})
    sparse = llmaccel.sparse_linear_fields(_weight(8, 160, 0.9))   # density 0.1: the crossover as measured
    dense = llmaccel.sparse_linear_fields(_weight(8, 160, 0.25))   # density 0.75: int(8 * 0.5 / 0.75) = 5
    assert _route(torch.randn(8, 160), sparse) == "bitmap"
    assert _route(torch.randn(9, 160), sparse) == "expand"
    # the column-index form: density <= INDEX_MAX_DENSITY and rows x density <= INDEX_MAX_WORK (0.4)
    assert [_route(torch.randn(m, 160), sparse) for m in (1, 4, 5)] == ["bitmap_index", "bitmap_index", "bitmap"]
    assert _route(torch.randn(1, 160), dense) == "bitmap"
    assert _route(torch.randn(5, 160), dense) == "bitmap"
    assert _route(torch.randn(6, 160), dense) == "expand"
    w = torch.randn(8, 16)
    half = BitmapWeight.from_dense(w.half(), prune(w, "unstructured", sparsity=0.5))
    hx = backends.explain("sparse_linear", torch.randn(1, 16), *llmaccel.sparse_linear_fields(half))
    assert hx.backend == "torch" and "float32 or int8 values" in hx.refused["cpp"], hx


def test_cap_refuses_avx2():
    from llmaccel import cpu

    if "avx2" not in AVAILABLE:
        pytest.skip("no AVX2 here")
    with cpu.cpu_isa("generic"):
        assert llmaccel.cpu_info()["ops"]["sparse_bitmap_linear"]["variant"] == "generic"
        with pytest.raises(ValueError, match=r"sparse_bitmap_linear: variant avx2 is above the cap"):
            _corrupt_raw(variant="avx2")
        x = torch.randn(3, 100)
        wt = _weight(17, 100, 0.5)
        _check(bitmap_linear_cpp(x, wt), x, wt, None)
