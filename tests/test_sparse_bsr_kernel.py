"""The C++ block-sparse linear (csrc/sparse_bsr*.cpp, ``llmaccel.sparsity.bsr_linear_cpp``) against float64
dense math on the pruned weight, for every ISA variant this CPU runs: block sizes (square, tall, 1 x 1, odd),
shapes with edge tiles, M from 1 to 513, tile densities 0 / 0.1 / 0.5 / 1 (an empty tile row gives the bias
exactly), fp32 and int8 tiles, strided and batched x, bit-identical results for any thread count, corrupt
indices and bad arguments raising with the op and the argument named, and the ``sparse_linear`` op's cpp
backend for ``layout="bsr"``.
"""

import functools

import pytest
import torch

import llmaccel
from llmaccel import backends
from llmaccel._ext import ext
from llmaccel.ops._cpp_views import view, view_or_none
from llmaccel.sparsity import BSRWeight, bsr_linear_cpp

from cpp_calls import call_views
from helpers import rotate_in_slow_pass, strided_x_cases

ALL_VARIANTS = [r["variant"] for r in ext().variant_table() if r["family"] == "sparse_bsr"]
AVAILABLE = llmaccel.cpu_info()["available_variants"]["sparse_bsr"]
VARIANTS = [pytest.param(v, id=v) for v in ALL_VARIANTS]
QUANTIZE = [pytest.param(None, id="fp32"), pytest.param("int8", id="int8")]
BLOCKS = [(32, 32), (16, 16), (8, 4), (1, 1), (3, 5)]


def _variant(v):
    if v not in AVAILABLE:
        pytest.skip(f"variant {v} does not run here (the CPU or LLMACCEL_CPU_ISA; available: {AVAILABLE})")
    return v


@functools.lru_cache(maxsize=64)
def _bsr(N, K, block, density, quantize=None, seed=0, partial=False):
    """A BSRWeight of a random N x K weight keeping each tile with probability ``density`` (0: none, 1: all);
    ``partial``: inside kept tiles, a random 70 % of the weights only (zeros inside stored tiles)."""
    g = torch.Generator().manual_seed(seed * 1000003 + N * 7919 + K * 31 + block[0] * 7 + block[1])
    w = torch.randn(N, K, generator=g)
    bh, bw = block
    R, T = -(-N // bh), -(-K // bw)
    keep = torch.rand(R, T, generator=g) < density
    mask = keep.repeat_interleave(bh, 0).repeat_interleave(bw, 1)[:N, :K]
    if partial:
        mask = mask & (torch.rand(N, K, generator=g) < 0.7)
    return BSRWeight.from_dense(w, mask, block, quantize=quantize)


def _dense64(bsr):
    """The pruned weight in float64: exact (int8: q * scale, the products exact in float64)."""
    if bsr.quantized:
        q, s = bsr.int8_dense()
        return q.double() * s.double()[:, None]
    return bsr.to_dense().double()


def _check(y, x, bsr, bias):
    """|y - ref| <= 1e-5 * (sum_k |x||w| + |bias|) + K * 2^-149 (subnormal rounding), ref in float64."""
    W = _dense64(bsr)
    x64 = x.double().reshape(-1, W.shape[1])
    ref = x64 @ W.T
    mag = x64.abs() @ W.abs().T
    if bias is not None:
        ref, mag = ref + bias.double(), mag + bias.double().abs()
    bound = 1e-5 * mag + W.shape[1] * 2.0 ** -149
    y = y.reshape(ref.shape)
    assert y.dtype == torch.float32 and torch.isfinite(y).all()
    err = (y.double() - ref).abs()
    bad = err > bound
    assert not bad.any(), f"{int(bad.sum())} outputs off; worst err {float(err.max()):.3g}, bound there " \
                          f"{float(bound.flatten()[int(err.argmax())]):.3g}"


# ---------------------------------------------------------------------------------------------------- shapes

SHAPES = [(1, 1), (3, 17), (17, 113), (113, 1000), (1000, 3), (113, 113)]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("quantize", QUANTIZE)
@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: f"{b[0]}x{b[1]}")
def test_shapes_blocks_densities(variant, quantize, block):
    v = _variant(variant)
    for N, K in SHAPES:
        bias = torch.randn(N)
        for d, density in enumerate((0.0, 0.1, 0.5, 1.0)):
            bsr = _bsr(N, K, block, density, quantize)
            # M = 1 and 513 always (one row; several row tiles and threads); the middle sizes in turn under the
            # sanitizer, where this sweep alone took 57 s.
            for M in (1, *rotate_in_slow_pass((3, 17, 100), d), 513):
                if block == (1, 1) and M == 513 and N * K > 20000:
                    continue  # 1 x 1 tiles pad to 8 outputs: the big product adds time, not coverage
                x = torch.randn(M, K)
                _check(bsr_linear_cpp(x, bsr, bias, v), x, bsr, bias)
                if density == 0.0:  # no tile anywhere: exactly the bias, and exactly 0 without one
                    assert torch.equal(bsr_linear_cpp(x, bsr, bias, v), bias.expand(M, N))
                    assert torch.equal(bsr_linear_cpp(x, bsr, None, v), torch.zeros(M, N))
            _check(bsr_linear_cpp(x, bsr, None, v), x, bsr, None)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("quantize", QUANTIZE)
def test_empty_tile_rows_give_bias_and_zeros_inside_tiles(variant, quantize):
    v = _variant(variant)
    N, K, block = 70, 100, (16, 8)
    w = torch.randn(N, K)
    mask = torch.rand(N, K) < 0.5          # unstructured inside the kept tiles
    mask[16:48] = False                    # tile rows 1 and 2 keep nothing
    mask[:, 40:64] = False                 # nor do tile columns 5 .. 7
    bsr = BSRWeight.from_dense(w, mask, block, quantize=quantize)
    assert int(bsr.crow_indices[2]) == int(bsr.crow_indices[3]) == int(bsr.crow_indices[1])
    bias = torch.randn(N)
    for M in (1, 7, 100):
        x = torch.randn(M, K)
        y = bsr_linear_cpp(x, bsr, bias, v)
        _check(y, x, bsr, bias)
        assert torch.equal(y[:, 16:48], bias[16:48].expand(M, 32))
    partial = _bsr(113, 1000, (32, 32), 0.5, quantize, partial=True)
    x = torch.randn(17, 1000)
    _check(bsr_linear_cpp(x, partial, bias[:1].expand(113).contiguous(), v), x, partial, bias[:1].expand(113))


@pytest.mark.parametrize("variant", VARIANTS)
def test_x_is_read_only_at_kept_tile_columns(variant):
    """An inf in x at a column no kept tile covers leaves every output finite (the dense reference: NaN)."""
    v = _variant(variant)
    w = torch.randn(40, 64)
    mask = torch.ones(40, 64, dtype=torch.bool)
    mask[:, 8:16] = False
    bsr = BSRWeight.from_dense(w, mask, (8, 8))
    x = torch.randn(3, 64)
    x[:, 11] = float("inf")
    assert torch.isfinite(bsr_linear_cpp(x, bsr, None, v)).all()


# ---------------------------------------------------------------------------------------------------- layouts

@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("quantize", QUANTIZE)
def test_strided_and_batched_x(variant, quantize):
    v = _variant(variant)
    N, K = 113, 1000
    bsr = _bsr(N, K, (16, 16), 0.5, quantize)
    bias = torch.randn(N)
    for name, x in strided_x_cases(K, rows=20).items():
        y = bsr_linear_cpp(x, bsr, bias, v)
        assert y.shape == (*x.shape[:-1], N), name
        _check(y, x.reshape(-1, K), bsr, bias)
    assert bsr_linear_cpp(torch.randn(0, K), bsr, bias, v).shape == (0, N)
    assert bsr_linear_cpp(torch.randn(2, 0, K), bsr, bias, v).shape == (2, 0, N)


@pytest.mark.parametrize("variant", VARIANTS)
def test_strided_tiles(variant):
    """Tiles that are a view (row stride > bw) go through the binding's strides."""
    v = _variant(variant)
    bsr = _bsr(50, 60, (8, 4), 0.5)
    wide = torch.zeros(bsr.values.shape[0], 8, 9)
    wide[:, :, 2:6] = bsr.values
    tiles = wide[:, :, 2:6]
    assert tiles.stride() == (72, 9, 1)
    x, y = torch.randn(5, 60), torch.empty(5, 50)
    ext().sparse_bsr_linear(view(x), view(tiles), view(bsr.crow_indices), view(bsr.col_indices), None, None, view(y),
                            2, v)
    _check(y, x, bsr, None)


# ---------------------------------------------------------------------------------------------------- threads

def _raw_call(x, bsr, bias, variant, nthreads):
    y = torch.full((x.shape[0], bsr.shape[0]), float("nan"))
    ext().sparse_bsr_linear(view(x), view(bsr.values), view(bsr.crow_indices), view(bsr.col_indices),
                            view(bsr.scale) if bsr.quantized else None, view_or_none(bias), view(y), nthreads, variant)
    return y


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("quantize", QUANTIZE)
@pytest.mark.parametrize("M,N,K,block", [(1, 300, 1000, (32, 32)), (100, 113, 1000, (16, 16)),
                                         (513, 64, 113, (8, 4)), (17, 113, 17, (3, 5))])
def test_bit_identical_for_any_thread_count(variant, quantize, M, N, K, block):
    v = _variant(variant)
    bsr = _bsr(N, K, block, 0.5, quantize)
    x, b = torch.randn(M, K), torch.randn(N)
    first = _raw_call(x, bsr, b, v, 1)
    _check(first, x, bsr, b)
    for nth in (2, 3, 7):
        assert torch.equal(_raw_call(x, bsr, b, v, nth).view(torch.int32), first.view(torch.int32)), nth
    before = torch.get_num_threads()
    try:
        for nth in (1, 2):  # the wrapper, through torch's thread count
            torch.set_num_threads(nth)
            assert torch.equal(bsr_linear_cpp(x, bsr, b, v).view(torch.int32), first.view(torch.int32)), nth
    finally:
        torch.set_num_threads(before)


# ---------------------------------------------------------------------------------------------------- errors

def test_cpu_info_lists_the_op_and_the_cap_applies():
    from llmaccel import cpu

    d = llmaccel.cpu_info()["ops"]["sparse_bsr_linear"]
    assert d["family"] == "sparse_bsr" and d["variant"] == AVAILABLE[0] and d["why"].startswith(d["variant"] + ":")
    assert ALL_VARIANTS == ["avx512", "avx2", "generic"]
    if "avx2" in AVAILABLE:  # capped at generic: the wrapper runs generic, avx2 is refused by name
        bsr, x = _bsr(17, 113, (8, 4), 0.5), torch.randn(3, 113)
        with cpu.cpu_isa("generic"):
            assert llmaccel.cpu_info()["ops"]["sparse_bsr_linear"]["variant"] == "generic"
            assert torch.equal(bsr_linear_cpp(x, bsr), bsr_linear_cpp(x, bsr, variant="generic"))
            with pytest.raises(ValueError, match=r"sparse_bsr_linear: variant avx2 is above the cap"):
                _raw(variant="avx2")


@functools.lru_cache(maxsize=1)
def _small():
    """5 x 12 in 2 x 4 tiles (3 tile rows, 3 tile columns), one tile kept per tile row: tile columns 0, 2, 1."""
    values = torch.randn(3, 2, 4)
    values[2, 1] = 0  # output row 5 is past N = 5: the bottom edge tile's padding
    return BSRWeight(values=values, col_indices=torch.tensor([0, 2, 1], dtype=torch.int32),
                     crow_indices=torch.tensor([0, 1, 2, 3]), shape=(5, 12), block_size=(2, 4))


def _raw(**over):
    """A valid raw call on _small() (M=2, fp32), with some arguments replaced."""
    bsr = _small()
    x, y, b = torch.randn(2, 12), torch.empty(2, 5), torch.randn(5)
    crow, col = over.pop("crow", bsr.crow_indices), over.pop("col", bsr.col_indices)
    call_views("sparse_bsr_linear", dict(x=x, values=bsr.values, crow_indices=crow, col_indices=col, scale=None,
                                         bias=b, y=y), dict(nthreads=2, variant=""), **over)
    if not over:
        _check(y, x, bsr, b)
    return y


def _corrupt(field, i, value):
    bsr = _small()
    t = (bsr.crow_indices if field == "crow" else bsr.col_indices).clone()
    t[i] = value
    return {field: t}


@pytest.mark.parametrize("over,msg", [
    (dict(variant="sse9"), r"unknown variant 'sse9' \(known: avx512, avx2, generic\)"),
    (dict(**{"x.sizes": (-1, 12)}), r"x has a negative size \(-1\)"),
    (dict(**{"y.sizes": (2, -2)}), r"y has a negative size \(-2\)"),
    (dict(**{"x.sizes": (2, -3)}), r"x has a negative size \(-3\)"),
    (dict(**{"values.sizes": (3, 0, 4)}), r"values must hold tiles of at least 1 x 1, got 0 x 4"),
    (dict(**{"values.sizes": (3, 2, 1 << 17)}), r"block size \(bh, bw\) = \(2, 131072\)"),
    (dict(**{"values.sizes": (-1, 2, 4)}), r"values has a negative size \(-1\)"),
    (dict(**{"x.addr": 0}), r"x is a null pointer"),
    (dict(**{"values.addr": 0}), r"values is a null pointer"),
    (dict(**{"crow_indices.addr": 0}), r"crow_indices is a null pointer"),
    (dict(**{"col_indices.addr": 0}), r"col_indices is a null pointer"),
    (dict(**{"y.addr": 0}), r"y is a null pointer"),
    (dict(**{"x.strides": (-12, 1)}), r"x has a negative stride"),
    (dict(**{"values.strides": (8, -1, 1)}), r"values has a negative stride"),
    (dict(**{"y.strides": (4, 1)}), r"y rows overlap \(y_sm = 4 < N = 5\)"),
    (dict(nthreads=0), r"nthreads must be >= 1, got 0"),
    (dict(**{"values.dtype": "int8"}), r"scale is None, but int8 values need float32 per-row scales \[N\]"),
    (dict(scale=(8, "float32", (5,), (1,))), r"scale must be None for float32 values"),
    (dict(**{"values.sizes": (2, 2, 4), "col_indices.sizes": (2,)}),
     r"crow_indices\[R\] \(R = 3 tile rows\) must be nnzb = 2, got 3"),
    (_corrupt("crow", 0, 1), r"crow_indices\[0\] must be 0, got 1"),
    (_corrupt("crow", 1, 3), r"crow_indices must not decrease, but crow_indices\[2\] = "),
    (_corrupt("crow", 3, 2), r"crow_indices must not decrease|crow_indices\[R\]"),
    (_corrupt("col", 1, 3), r"col_indices\[1\] = 3 is outside \[0, 3\)"),
    (_corrupt("col", 0, -1), r"col_indices\[0\] = -1 is outside \[0, 3\)"),
    (_corrupt("col", 2, 1 << 30), r"col_indices\[2\] = 1073741824 is outside"),
])
def test_raw_binding_rejects_bad_arguments(over, msg):
    with pytest.raises(ValueError, match=r"^llmaccel::sparse_bsr_linear: (" + msg + ")"):
        _raw(**over)


@pytest.mark.parametrize("over,msg", [
    ({"x.strides": (1 << 62, 1)}, r"x: .*(overflow|beyond)"),
    ({"values.strides": (1 << 62, 4, 1)}, r"values: .*(overflow|beyond)"),
    ({"x.sizes": (0, 1 << 60), "y.sizes": (0, 5)}, r"N = 5 or K = 1152921504606846976 is beyond"),
    ({"x.sizes": (1 << 40, 1 << 24), "x.strides": (0, 1), "y.sizes": (1 << 40, 5)},
     r"the packing buffers .* overflow int64"),
])
def test_raw_binding_overflow(over, msg):
    with pytest.raises(OverflowError, match=r"^llmaccel::sparse_bsr_linear: " + msg):
        _raw(**over)


def test_scratch_allocation_failure_is_memory_error():
    ext()._fail_scratch_alloc_after(1)
    try:
        with pytest.raises(MemoryError):
            _raw()
    finally:
        ext()._fail_scratch_alloc_after(0)
    assert torch.isfinite(_raw()).all()


def _half_weight():
    return BSRWeight.from_dense(torch.randn(5, 12).half(), torch.ones(5, 12, dtype=torch.bool), (2, 4))


@pytest.mark.parametrize("call,exc,msg", [
    (lambda x, w: bsr_linear_cpp(x, w, None, "sse9"), ValueError, r"unknown variant .sse9. \(known: avx512, avx2, generic\)"),
    (lambda x, w: bsr_linear_cpp(x.double(), w), ValueError, r"x must be float32"),
    (lambda x, w: bsr_linear_cpp(torch.randn(2, 13), w), ValueError, r"x's last dimension must be in_features = 12"),
    (lambda x, w: bsr_linear_cpp(x, w, torch.randn(4)), ValueError, r"bias must be a float32 CPU tensor of shape"),
    (lambda x, w: bsr_linear_cpp(x, w.to_dense()), TypeError, r"weight must be a BSRWeight, got Tensor"),
    (lambda x, w: bsr_linear_cpp(x, w, None, 2), TypeError, r"variant must be a str"),
    (lambda x, w: bsr_linear_cpp(x, _half_weight()), ValueError, r"weight values must be float32 \(or int8"),
], ids=["variant", "x dtype", "x shape", "bias", "weight type", "variant type", "half weight"])
def test_wrapper_rejects_bad_arguments(call, exc, msg):
    with pytest.raises(exc, match=r"(llmaccel.sparsity.bsr_linear_cpp: |llmaccel::sparse_bsr_linear: )" + msg):
        call(torch.randn(2, 12), _small())


# ---------------------------------------------------------------------------------------------------- the op

FIELDS = llmaccel.sparse_linear_fields


@pytest.mark.parametrize("quantize", QUANTIZE)
def test_op_runs_bsr_on_cpp_for_any_m(quantize):
    bsr = _bsr(113, 1000, (32, 32), 0.5, quantize)
    bias = torch.randn(113)
    for M in (1, 17, 600):
        x = torch.randn(M, 1000)
        ex = backends.explain("sparse_linear", x, *FIELDS(bsr), bias)
        assert ex.backend == "cpp", ex
        with backends.use("cpp"):
            y = llmaccel.sparse_linear(x, *FIELDS(bsr), bias)
        _check(y, x, bsr, bias)
        assert torch.equal(y, bsr_linear_cpp(x, bsr, bias))  # the op is the kernel, nothing more


def test_op_half_x_and_refusals():
    bsr = _bsr(17, 113, (8, 4), 0.5)
    ref = torch.randn(3, 113)
    for dtype, tol in ((torch.float16, 2e-3), (torch.bfloat16, 2e-2)):
        x = ref.to(dtype)
        with backends.use("cpp"):
            y = llmaccel.sparse_linear(x, *FIELDS(bsr), torch.randn(17).to(dtype))
        assert y.dtype == dtype and y.shape == (3, 17)
        with backends.use("cpp"):
            y = llmaccel.sparse_linear(x, *FIELDS(bsr))
        want = x.double() @ _dense64(bsr).T
        assert torch.allclose(y.double(), want, rtol=tol, atol=tol * float(want.abs().max()))
    half = BSRWeight.from_dense(torch.randn(17, 113).half(), torch.ones(17, 113, dtype=torch.bool), (8, 4))
    ex = backends.explain("sparse_linear", ref, *FIELDS(half))
    assert ex.backend == "torch" and "C++ BSR kernel takes float32 or int8 values" in ex.refused["cpp"], ex


def test_op_corrupt_index_raises_on_cpp():
    bsr = _bsr(17, 113, (8, 4), 0.5)
    values, col, crow, scale, layout, meta = FIELDS(bsr)
    bad_col, bad_crow = col.clone(), crow.clone()
    bad_col[0] = 1000
    bad_crow[1] = -5
    x = torch.randn(2, 113)
    with backends.use("cpp"):
        with pytest.raises(ValueError, match=r"sparse_bsr_linear: col_indices\[0\] = 1000 is outside \[0, 29\)"):
            llmaccel.sparse_linear(x, values, bad_col, crow, scale, layout, meta)
        with pytest.raises(ValueError, match=r"sparse_bsr_linear: crow_indices must not decrease"):
            llmaccel.sparse_linear(x, values, col, bad_crow, scale, layout, meta)
