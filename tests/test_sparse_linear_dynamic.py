"""``act="dynamic"`` sparse linear (W8A8: x quantized per token, int8 x int8): the C++ N:M kernel
(``sparse_nm_i8_linear``, every ISA variant) exact in its int32 core against the integer reference; the op on
every backend and layout against the float64 reference of the same math; the module, autograd
(straight-through) and bad input.
"""

import pytest
import torch

import llmaccel
from cpp_calls import call_views
from helpers import require_variant, variant_params
from llmaccel import backends
from llmaccel.ops import sparse_linear_routes
from llmaccel._ext import ext
from llmaccel.ops._cpp_views import view, view_or_none
from llmaccel.nn import SparseLinear
from llmaccel.ops.quantize import quantize_per_token_reference
from llmaccel.sparsity import BitmapWeight, BSRWeight, NMPackedWeight, prune, sparse_linear_reference

FIELDS = llmaccel.sparse_linear_fields
VARIANTS = variant_params("sparse_nm")


def _variant(v):
    return require_variant("sparse_nm", v)


def _nm(N, K, pattern, seed=0):
    g = torch.Generator().manual_seed(seed * 7919 + N * 31 + K)
    w = torch.randn(N, K, generator=g)
    return NMPackedWeight.from_dense(w, prune(w, pattern), pattern, quantize="int8")


def _i8_raw(x, pw, bias, variant, nthreads=2, y_sm=None):
    """``llmaccel._C.sparse_nm_i8_linear`` on an int8 ``NMPackedWeight``; x [M, K] with unit column stride."""
    M, K = x.shape
    N = pw.shape[0]
    y_sm = N if y_sm is None else y_sm
    out = torch.full((max(M, 1), y_sm), float("nan"))
    ext().sparse_nm_i8_linear(view(x), view(pw.values), view(pw.indices), view(pw.scale), view_or_none(bias),
                              view(out[:M, :N]), pw.n, pw.m, nthreads, variant)
    return out[:M]


def _cpp_codes(x):
    """The C++ per-token codes (``quantize_per_token`` on the cpp backend): the kernel quantizes with the same
    row function (csrc/quantize.h ``quantize_row``).  The reference divides in float64 instead and may land one
    step away within an ulp of a tie (ops/quantize.py documents it), so the exact test takes these codes."""
    with backends.use("cpp"):
        return llmaccel.quantize_per_token(x)


def _integer_reference(x, pw):
    """(int64 sums xq @ q.T, sx): the exact core, from the C++ codes of x and the weight's codes."""
    xq, sx = _cpp_codes(x)
    codes = torch.round(pw.to_dense().double() / pw.scale.double().unsqueeze(1)).to(torch.int64)
    return xq.to(torch.int64) @ codes.t(), sx


def _expect_exact(y, x, pw, where):
    """No bias: y must be float32(acc) * sx * scale exactly (two fp32 products; nothing to contract)."""
    acc, sx = _integer_reference(x, pw)
    want = acc.to(torch.float32) * sx.unsqueeze(1) * pw.scale.unsqueeze(0)
    same = (y == want) | (torch.isnan(y) & torch.isnan(want))
    assert bool(same.all()), f"{where}: {int((~same).sum())} outputs differ; worst " \
                             f"{float((y - want).abs().nan_to_num(0).max()):.3g}"


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("pattern", ["2:4", "4:8", "1:2"])
def test_kernel_int32_core_is_exact(variant, pattern):
    """Every row-tile size (M = 1..9, 17), K below, at and past the 64-column vector block and with a tail
    group, odd N; extremes: rows whose codes are all +-127 (the largest pair sums), a row of zeros, tiny and
    huge rows, a non-finite row (its outputs NaN, the others untouched)."""
    variant = _variant(variant)
    for K in (3, 64, 65, 127, 128, 200, 4099):
        for N in (1, 17, 40):
            pw = _nm(N, K, pattern)
            for M in (1, 2, 3, 4, 5, 9, 17):
                x = torch.randn(M, K) * 3
                _expect_exact(_i8_raw(x, pw, None, variant), x, pw, f"{variant} {pattern} M={M} N={N} K={K}")
    K, N = 257, 33
    pw = _nm(N, K, pattern, seed=1)
    x = torch.randn(8, K)
    x[0] = torch.where(torch.rand(K) < 0.5, -1.0, 1.0)  # codes all +-127
    x[1] = 0.0
    x[2] *= 1e-30
    x[3] *= 1e32  # huge, the outputs still finite
    x[4, 5] = float("inf")
    x[5, 100] = float("nan")
    x[6] = -x[0]
    x[7] = torch.randn(K) * 1e-42  # subnormal: the double-division path of the quantizer
    y = _i8_raw(x, pw, None, variant)
    _expect_exact(y, x, pw, f"{variant} {pattern} extremes")
    assert bool(torch.isnan(y[4:6]).all()) and bool(torch.isfinite(y[[0, 1, 2, 3, 6, 7]]).all())


@pytest.mark.parametrize("variant", VARIANTS)
def test_kernel_exact_at_the_largest_k(variant):
    """K = 133000 (the limit) with every code +127 in x and in the kept weights: the true dot, 127 * 127 * K / 2,
    fits int32, but a kernel that biases the codes to unsigned (the avx512vbmi unit's (x + 128) * q, less
    128 * sum q) passes 2^31 on the way, and must come back to the exact sum (modulo-2^32 arithmetic)."""
    variant = _variant(variant)
    K = 133000
    w = torch.ones(2, K)
    w[1, 1::2] = -1.0  # the second row: kept codes alternate in sign per group, the dot stays small
    pw = NMPackedWeight.from_dense(w, prune(w, "2:4"), "2:4", quantize="int8")
    x = torch.ones(1, K)
    acc, _ = _integer_reference(x, pw)
    assert int(acc[0, 0]) == 127 * 127 * K // 2 and 255 * 127 * (K // 2) > 2 ** 31
    _expect_exact(_i8_raw(x, pw, None, variant), x, pw, f"{variant} K={K}")


@pytest.mark.parametrize("variant", VARIANTS)
def test_kernel_strides_bias_threads(variant):
    """Strided x rows and y rows (nothing written past N), bias within an fp32 rounding or a fused
    multiply-add of the exact core, and bit-identical results for 1, 2 and 3 threads."""
    variant = _variant(variant)
    pw = _nm(37, 300, "2:4", seed=2)
    base = torch.randn(7, 400)
    x = base[:, 50:350]  # row stride 400
    bias = torch.randn(37)
    full = _i8_raw(x, pw, bias, variant, y_sm=45)
    y = full[:, :37]
    assert bool(torch.isnan(full[:, 37:]).all())  # nothing written past N
    acc, sx = _integer_reference(x, pw)
    core = acc.double() * sx.double().unsqueeze(1) * pw.scale.double()
    want = core + bias.double()
    assert bool(((y.double() - want).abs() <= 3e-7 * (core.abs() + bias.double().abs()) + 1e-30).all())
    runs = [_i8_raw(x, pw, bias, variant, nthreads=t) for t in (1, 2, 3)]
    assert all(torch.equal(runs[0], r) for r in runs[1:])


@pytest.mark.parametrize("over,msg", [
    (dict(K=133001), r"K = 133001 is above 133000"),
    (dict(**{"x.addr": 0}), r"x is a null pointer"),
    (dict(**{"scale.dtype": "int8"}), r"scale must be float32, got int8"),
    (dict(**{"scale.sizes": (4,)}), r"scale must have shape \[5\] \(from the other tensors\), got \[4\]"),
    (dict(variant="sse9"), r"unknown variant 'sse9'"),
    (dict(n=4, m=4), r"pattern n:m = 4:4"),
    (dict(**{"y.strides": (4, 1)}), r"y rows overlap"),
])
def test_raw_binding_rejects_bad_arguments(over, msg):
    pw = _nm(5, 12, "2:4")
    x, y = torch.randn(2, 12), torch.empty(2, 5)
    if "K" in over:  # x big enough for the claimed K and the weight's views claiming it, so only the K check fires
        K = over.pop("K")
        x = torch.randn(2, K)
        over.update({"values.sizes": (5, -(-K // 4) * 2), "indices.sizes": (5, -(-(-(-K // 4) * 2 * 2) // 8))})
    with pytest.raises(ValueError, match=r"^llmaccel::sparse_nm_i8_linear: " + msg):
        call_views("sparse_nm_i8_linear", dict(x=x, values=pw.values, indices=pw.indices, scale=pw.scale, bias=None,
                                               y=y), dict(n=2, m=4, nthreads=2, variant=""), **over)


# ------------------------------------------------------------------------------------------------- the op

def _weights(kind, n_out, k):
    g = torch.Generator().manual_seed(n_out * 131 + k)
    w = torch.randn(n_out, k, generator=g)
    if kind == "bitmap":
        return BitmapWeight.from_dense(w, prune(w, "unstructured", sparsity=0.7), quantize="int8")
    if kind == "bsr":
        return BSRWeight.from_dense(w, prune(w, "block", sparsity=0.5, block_size=(4, 8)), (4, 8), quantize="int8")
    return NMPackedWeight.from_dense(w, prune(w, kind), kind, quantize="int8")


def _close_to_float64(y, x, pw, bias, where):
    """Within a few fp32 roundings of sum |xq sx| |W| (the routes that run on the dequantized codes sum in
    fp32; the int8 kernel only rounds its epilogue)."""
    ref = sparse_linear_reference(x, pw, bias, dtype=torch.float64, act="dynamic")
    x2 = x.reshape(-1, x.shape[-1]).to(torch.float32)
    xq, sx = quantize_per_token_reference(x2)
    xd = (xq.double() * sx.double().unsqueeze(1)).abs()
    w_abs = pw.to_dense().double().abs()
    mag = xd @ w_abs.t() + (bias.double().abs() if bias is not None else 0)
    # A code may land one step away where x / scale is within an ulp of a tie (ops/quantize.py): allow
    # sx * |W| at those elements, and nothing elsewhere.
    frac = (x2.double() / sx.double().unsqueeze(1)).abs() % 1.0
    near_tie = ((frac - 0.5).abs() < 1e-6).double()
    tie = (near_tie * sx.double().unsqueeze(1)) @ w_abs.t()
    err = (y.double().reshape(ref.shape) - ref).abs()
    assert y.shape == (*x.shape[:-1], pw.shape[0]) and y.dtype == x.dtype, where
    tol = 4e-6 if x.dtype == torch.float32 else 1e-2
    bound = tol * mag + 1.01 * tie
    assert bool((err.reshape(bound.shape) <= bound + 1e-30).all()), f"{where}: worst {float(err.max()):.3g}"


@pytest.mark.parametrize("kind", ["2:4", "4:8", "bitmap", "bsr"])
def test_every_backend_matches_the_float64_reference(kind):
    for n_out, k in ((1, 1), (17, 113), (33, 200), (20, 4099)):
        pw = _weights(kind, n_out, k)
        for lead in ((1,), (3,), (2, 17)):
            x = torch.randn(*lead, k)
            for bias in (torch.randn(n_out), None):
                args = (x, *FIELDS(pw), bias, "dynamic")
                ran = []
                for name in backends.BACKENDS:
                    with backends.use(name):
                        if backends.explain("sparse_linear", *args).backend != name:
                            continue
                        y = llmaccel.sparse_linear(*args)
                    ran.append(name)
                    _close_to_float64(y, x, pw, bias, f"{name} {kind} {n_out}x{k} {lead}")
                assert "torch" in ran and "cpp" in ran, ran


def test_cpp_explains_the_int8_kernel_and_half_precision_x(monkeypatch):
    # Past the int8 kernel's crossover the large-M kernel runs wherever it was not measured to lose to dense.
    monkeypatch.setattr(sparse_linear_routes, "NM_LARGE_LOSES_TO_DENSE", frozenset())
    pw = _weights("2:4", 40, 256)
    x = torch.randn(2, 256)
    with backends.use("cpp"):
        notes = " ".join(backends.explain("sparse_linear", x, *FIELDS(pw), None, "dynamic").notes)
        assert "sparse_nm_i8_linear" in notes, notes
        # the int8 kernel runs up to its own crossover (avx2: 192 rows, past the fp32 kernel's 16)
        i8_limit = sparse_linear_routes.crossover("nm_i8", "sparse_nm")[0].max_m
        fp32_limit = sparse_linear_routes.crossover("nm", "sparse_nm")[0].max_m
        mid = torch.randn(i8_limit, 256)
        assert "sparse_nm_i8_linear" in " ".join(backends.explain("sparse_linear", mid, *FIELDS(pw), None,
                                                                  "dynamic").notes)
        if i8_limit > fp32_limit:
            assert "route 'nm_large'" in " ".join(backends.explain("sparse_linear", mid, *FIELDS(pw)).notes)
        xb = torch.randn(300, 256)
        big = " ".join(backends.explain("sparse_linear", xb, *FIELDS(pw), None, "dynamic").notes)
        assert "dequantized per-token codes" in big, big
        _close_to_float64(llmaccel.sparse_linear(xb, *FIELDS(pw), None, "dynamic"), xb, pw, None, "large M")
        for dt in (torch.float16, torch.bfloat16):
            xh = x.to(dt)
            _close_to_float64(llmaccel.sparse_linear(xh, *FIELDS(pw), None, "dynamic"), xh, pw, None, str(dt))


def test_opcheck_and_straight_through_gradient():
    pw = _weights("2:4", 7, 64)
    x = torch.randn(3, 64)
    bias = torch.randn(7)
    for name in ("torch", "cpp"):
        with backends.use(name):
            torch.library.opcheck(torch.ops.llmaccel.sparse_linear.default, (x, *FIELDS(pw), bias, "dynamic"))
            xg = x.clone().requires_grad_(True)
            bg = bias.clone().requires_grad_(True)
            y = llmaccel.sparse_linear(xg, *FIELDS(pw), bg, "dynamic")
            g = torch.randn_like(y)
            y.backward(g)
            assert torch.allclose(xg.grad, g @ pw.to_dense(), rtol=1e-5, atol=1e-5)  # straight-through
            assert torch.allclose(bg.grad, g.sum(0))


def test_module_and_bad_input():
    torch.manual_seed(3)
    lin = torch.nn.Linear(128, 24)
    sl = SparseLinear.from_linear(lin, "2:4", quantize="int8", act="dynamic")
    assert "act=dynamic" in repr(sl)
    x = torch.randn(5, 128)
    ref = sparse_linear_reference(x, sl.weight_format(), sl.bias.detach(), dtype=torch.float64, act="dynamic")
    assert torch.allclose(sl(x).double(), ref, rtol=1e-5, atol=1e-5)
    back = SparseLinear(128, 24, quantize="int8", act="dynamic")
    back.load_state_dict(sl.state_dict())
    assert torch.equal(back(x), sl(x))
    with pytest.raises(ValueError, match=r"act='dynamic' \(int8 activations\) needs quantize='int8'"):
        SparseLinear.from_linear(lin, "2:4", act="dynamic")
    with pytest.raises(ValueError, match=r"SparseLinear: act must be one of"):
        SparseLinear(128, 24, quantize="int8", act="static")
    fp = _weights("2:4", 4, 16)
    fp32 = NMPackedWeight.from_dense(torch.randn(4, 16), prune(torch.randn(4, 16), "2:4"), "2:4")
    with pytest.raises(ValueError, match=r"sparse_linear: act='dynamic' .* needs int8 values"):
        llmaccel.sparse_linear(torch.randn(1, 16), *FIELDS(fp32), None, "dynamic")
    with pytest.raises(ValueError, match=r"sparse_linear: act must be one of \('none', 'dynamic'\), got 'int4'"):
        llmaccel.sparse_linear(torch.randn(1, 16), *FIELDS(fp), None, "int4")
    with pytest.raises(ValueError, match=r"SparsityConfig: act must be 'none', or 'dynamic' with quantize='int8'"):
        llmaccel.SparsityConfig(act="dynamic")
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8))
    llmaccel.sparsify_(model, llmaccel.SparsityConfig(quantize="int8", act="dynamic"), filter_fn=lambda m, f: f == "0")
    assert isinstance(model[0], SparseLinear) and model[0].act == "dynamic"


@pytest.mark.triton
def test_triton_runs_the_dequantized_codes():
    """kernels/sparse_nm.py and kernels/sparse_bsr.py on ``xq * sx`` (in the interpreter on CPU, or a GPU)."""
    for kind, n_out, k, lead in (("2:4", 17, 113, (3,)), ("4:8", 9, 64, (1,)), ("bsr", 13, 40, (2, 5))):
        pw = _weights(kind, n_out, k)
        x, bias = torch.randn(*lead, k), torch.randn(n_out)
        args = (x, *FIELDS(pw), bias, "dynamic")
        with backends.use("triton"):
            ex = backends.explain("sparse_linear", *args)
            if ex.backend != "triton":
                pytest.skip(str(ex))
            y = llmaccel.sparse_linear(*args)
        _close_to_float64(y, x, pw, bias, f"triton {kind}")


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("N", [1, 5, 37, 301])
def test_decode_walk_is_exact_for_any_thread_count(variant, N):
    """M = 1 (the decode walk: 4 rows read side by side, one from each quarter of a thread's rows, the rest
    row by row): every output equals the exact integer core, for 1, 2, 3 and 7 threads, whatever N leaves over."""
    variant = _variant(variant)
    pw = _nm(N, 1000, "2:4", seed=5)
    x = torch.randn(1, 1000) * 3
    runs = [_i8_raw(x, pw, None, variant, nthreads=t) for t in (1, 2, 3, 7)]
    _expect_exact(runs[0], x, pw, f"{variant} N={N}")
    assert all(torch.equal(runs[0], r) for r in runs[1:])
