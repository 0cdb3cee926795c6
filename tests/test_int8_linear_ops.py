"""llmaccel.quantize_per_token and llmaccel.int8_linear: every CPU backend against float64 references.

Each property is one test that loops over every backend able to run the
call here: the torch reference always, "cpp" when the extension provides the
op (and its check accepts the call), "triton" under TRITON_INTERPRET=1 (and
the compiled Triton kernels on a CUDA GPU in the ``cuda``-marked test).
Backends that ``llmaccel.backends.explain`` refuses are skipped, so a backend
that only implements one mode (cpp: act="dynamic") is tested where it exists.

Error bounds are derived from the contract (llmaccel/ops/quantize.py and
llmaccel/ops/int8_linear.py) rather than compared with another backend.
"""

import math

import pytest
import torch

import llmaccel
from llmaccel import backends

from helpers import INTERPRET, randint8

FLOATS = (torch.float32, torch.float16, torch.bfloat16)

# Relative rounding of the output dtype (a full ulp at the top of a binade,
# twice the worst rounding error) and its smallest spacing near zero.
OUT_EPS = {torch.float32: 0.0, torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}
OUT_ATOL = {torch.float32: 1e-30, torch.float16: 2.0**-24, torch.bfloat16: 1e-30}
# Slack for the fp32 arithmetic of the contract (a handful of roundings of
# 2**-24 each, and fp32 dot products over K <= 130), relative to the magnitude
# of the terms being summed. Longer fp32 sums get the worst-case K * 2**-24.
FP32_SLACK = 1e-5
# The reference divides x / scale in float64; backends may divide in fp32 or
# multiply by a reciprocal (the quantize contract allows it): near |v| = 127
# the extra roundings move v by up to ~2e-5, so |q * scale - x| <= scale * (0.5 + 2e-5).
Q_SLACK = 1e-4  # relative to the 0.5 * scale bound


def _fp32_slack(K):
    return max(FP32_SLACK, (K + 8) * 2.0**-24)


def _runnable(op, *args):
    """Backends that would run ``op(*args)`` here when requested explicitly (explain does not refuse them)."""
    names = []
    for name in backends.BACKENDS:
        with backends.use(name):
            if backends.explain(op, *args).backend == name:
                names.append(name)
    assert "torch" in names
    if INTERPRET or args[0].is_cuda:
        assert "triton" in names, backends.explain(op, *args)
    return names


def _to(device, *tensors):
    return tuple(t.to(device) if t is not None else None for t in tensors)


def _on(name, fn, *args, **kwargs):
    with backends.use(name):
        return fn(*args, **kwargs)


# =========================================================================
# quantize_per_token
# =========================================================================

def _quantize_fp64(x):
    """(q_ref int64-valued float64, scale_ref float64) computed in float64 from x's exact values."""
    x64 = x.double()
    K = x.shape[-1]
    absmax = x64.abs().amax(dim=-1) if K > 0 else x64.new_zeros(x.shape[:-1])
    scale = torch.where(absmax > 0, absmax / 127.0, torch.ones_like(absmax))
    q = torch.clamp(torch.round(x64 / scale.unsqueeze(-1)), -127, 127)
    return q, scale


def _quantize_inputs(dtype):
    """(label, x) over odd K, ranks, strides, zero rows and extreme magnitudes."""
    for K in (1, 3, 17, 113, 1000, 4099):
        rows = 3 if K <= 1000 else 2
        yield f"2-D K={K}", (torch.randn(rows, K) * 3).to(dtype)
    yield "1-D K=113", torch.randn(113).to(dtype)
    yield "3-D [2,3,17]", torch.randn(2, 3, 17).to(dtype)
    yield "3-D [1,2,1]", torch.randn(1, 2, 1).to(dtype)
    yield "transposed", torch.randn(33, 4).to(dtype).t()
    base = torch.randn(7, 2 * 67 + 1).to(dtype)
    yield "strided rows and columns", base[::2, 1::2]
    yield "strided rows", base[1::3, :67]
    yield "permuted 3-D", torch.randn(3, 13, 2).to(dtype).permute(0, 2, 1)
    z = torch.randn(4, 19).to(dtype)
    z[1] = 0
    z[3] = -0.0
    yield "all-zero rows", z
    yield "no rows", torch.randn(0, 5).to(dtype)
    if dtype == torch.float16:
        big, tiny = 6.0e4, 6.0e-8  # fp16: max 65504, smallest subnormal 6e-8
    else:
        big, tiny = 1e30, 1e-30
    e = torch.randn(5, 9).to(dtype)
    e[0, 3], e[0, 5] = big, -big
    e[1, :] = -big
    e[2, :] = tiny
    e[2, 4] = -tiny
    e[3, 0], e[3, 1] = big, tiny
    e[4, 2] = -big
    yield "extreme values", e


@pytest.mark.triton
def test_quantize_per_token_matches_fp64():
    for dtype in FLOATS:
        for label, x in _quantize_inputs(dtype):
            q_ref, s_ref = _quantize_fp64(x)
            for name in _runnable("quantize_per_token", x):
                where = f"{name}, {dtype}, {label}, shape {tuple(x.shape)}"
                q, s = _on(name, llmaccel.quantize_per_token, x)
                assert q.dtype == torch.int8 and q.shape == x.shape, where
                assert s.dtype == torch.float32 and s.shape == x.shape[:-1], where
                assert torch.isfinite(s).all() and (s > 0).all(), where
                s64 = s.double()
                assert ((s64 - s_ref).abs() <= 1e-6 * s_ref).all(), f"scale off: {where}"
                zero_rows = (x == 0).all(dim=-1) if x.shape[-1] > 0 else torch.ones(x.shape[:-1], dtype=torch.bool)
                assert (s[zero_rows] == 1.0).all(), f"all-zero rows need scale 1: {where}"
                if x.numel() == 0:
                    continue
                assert (q[zero_rows] == 0).all(), f"all-zero rows need q = 0: {where}"
                assert (q.long().abs() <= 127).all(), f"-128 produced: {where}"
                assert ((q.double() - q_ref).abs() <= 1).all(), f"q more than one step off: {where}"
                err = (q.double() * s64.unsqueeze(-1) - x.double()).abs()
                bound = 0.5 * s64.unsqueeze(-1) * (1 + Q_SLACK)
                assert (err <= bound).all(), f"|q * scale - x| > scale / 2: {where}, worst {(err / bound).max()}"
                # Quantization commutes with the layout: same answer as for a contiguous copy.
                q_c, s_c = _on(name, llmaccel.quantize_per_token, x.contiguous())
                assert torch.equal(q, q_c) and torch.equal(s, s_c), f"layout changes the result: {where}"


@pytest.mark.triton
def test_quantize_per_token_empty_rows():
    """K = 0: every row is (vacuously) all-zero, so scale = 1 and q is empty."""
    x = torch.randn(2, 3, 0)
    for name in _runnable("quantize_per_token", x):
        q, s = _on(name, llmaccel.quantize_per_token, x)
        assert q.shape == (2, 3, 0) and q.dtype == torch.int8, name
        assert s.shape == (2, 3) and torch.equal(s, torch.ones(2, 3)), name


@pytest.mark.triton
def test_quantize_per_token_tiny_rows():
    """Rows near the bottom of fp32: subnormal scales, and scales that underflow to 0 (then scale = 1)."""
    x = torch.tensor([[1.2e-38, 0.0, -6e-39, 3e-39, 0.0],    # absmax normal, scale subnormal
                      [2e-37, -1e-37, 0.0, 5e-38, 0.0],      # 127 / absmax overflows fp32
                      [1e-30, 0.0, -1e-30, 2e-31, 0.0],
                      [1e-44, 0.0, -3e-45, 1e-45, 0.0],      # absmax / 127 underflows to 0
                      [0.0, 0.0, 0.0, 0.0, 0.0]])
    # The contract's fp32 scale: absmax / 127 rounded to fp32 (subnormal: few bits), 1 where that is 0.
    expected_scale = x.abs().amax(-1) / 127.0
    expected_scale = torch.where(expected_scale > 0, expected_scale, torch.ones_like(expected_scale))
    assert expected_scale[3] == 1.0 and 0 < expected_scale[0] < 1.18e-38
    for name in _runnable("quantize_per_token", x):
        q, s = _on(name, llmaccel.quantize_per_token, x)
        assert torch.equal(s, expected_scale), (name, s)
        q_ref = torch.clamp(torch.round(x.double() / s.double().unsqueeze(-1)), -127, 127)
        assert (q[x == 0] == 0).all(), (name, q)
        assert ((q.double() - q_ref).abs() <= 1).all(), (name, q, q_ref)
        assert (q[3:] == 0).all(), (name, q)


# =========================================================================
# int8_linear
# =========================================================================

def _weights(N, K, xdtype, with_bias, strided=False):
    """(w_int8 [N, K], w_scale [N], bias [N] or None); ``strided``: column-major w, strided w_scale and bias."""
    if strided:
        w = randint8(K, N).t()
        w_scale = (torch.rand(2 * N) * 0.02 + 1e-3)[::2]
        bias = (torch.randn(3 * N) * 0.5).to(xdtype)[1::3] if with_bias else None
        return w, w_scale, bias
    w = randint8(N, K)
    w_scale = torch.rand(N) * 0.02 + 1e-3
    bias = (torch.randn(N) * 0.5).to(xdtype) if with_bias else None
    return w, w_scale, bias


def _layout(x, strided):
    """x itself, or the same values in a column-major / strided layout."""
    if not strided:
        return x
    if x.dim() == 2:
        return x.t().contiguous().t()
    wide = torch.zeros(*x.shape[:-1], 2 * x.shape[-1], dtype=x.dtype)
    wide[..., ::2] = x
    return wide[..., ::2]


def _w_deq64(w, w_scale):
    return w.double() * w_scale.double().unsqueeze(1)  # exact in float64


def _linear_shapes_small():
    # (leading dims of x, K, N): M in {1, 2, 3, 17, 6}, K and N off every vector width.
    return [((1,), 13, 7), ((2,), 1, 33), ((3,), 67, 1), ((17,), 130, 7), ((2, 3), 67, 33), ((1, 17), 13, 1),
            ((2,), 130, 7)]


def _linear_shapes_large():
    shapes = []
    for M in (1, 2, 3, 17, 64, 257):
        for K in (1, 13, 67, 130):
            for N in (1, 7, 33):
                lead = (M,) if (M + K + N) % 2 else {1: (1, 1), 2: (2, 1), 3: (1, 3), 17: (17, 1), 64: (4, 16),
                                                     257: (257, 1)}[M]
                shapes.append((lead, K, N))
    return shapes


def _gaussian_cases(shapes, strided_parity):
    """Gaussian x and random int8 weights over ``shapes`` x dtypes x bias, with the float64 truth.

    Yields (lead, K, N, dtype, with_bias, x, w, w_scale, bias, x64, wd, b64, y64): wd is the
    dequantized weight and y64 = x64 @ wd.T + b64.  Shapes whose index has parity
    ``strided_parity`` use strided / transposed layouts."""
    for i, (lead, K, N) in enumerate(shapes):
        strided = i % 2 == strided_parity
        for dtype in FLOATS:
            for with_bias in (False, True):
                x = _layout(torch.randn(*lead, K).to(dtype), strided)
                w, w_scale, bias = _weights(N, K, dtype, with_bias, strided)
                x64 = x.double().reshape(-1, K)
                wd = _w_deq64(w, w_scale)
                b64 = bias.double() if bias is not None else torch.zeros(N, dtype=torch.float64)
                yield lead, K, N, dtype, with_bias, x, w, w_scale, bias, x64, wd, b64, x64 @ wd.t() + b64


def _check_dynamic_gaussian(shapes, device="cpu"):
    for lead, K, N, dtype, with_bias, x, w, w_scale, bias, x64, wd, b64, y64 in _gaussian_cases(shapes, 1):
        _, s_ref = _quantize_fp64(x64)
        # |q * s - x| <= s / 2 per element, summed against |w_deq| over k.
        quant = 0.5 * (1 + Q_SLACK) * (s_ref * (1 + 1e-6)).unsqueeze(1) * wd.abs().sum(1).unsqueeze(0)
        mag = x64.abs() @ wd.abs().t() + quant + b64.abs()
        tol = quant + _fp32_slack(K) * mag + OUT_EPS[dtype] * (y64.abs() + quant) + OUT_ATOL[dtype]
        args = _to(device, x, w, w_scale, bias)
        for name in _runnable("int8_linear", *args, "dynamic"):
            where = f"{name}, {dtype}, x {tuple(x.shape)}, N={N}, bias={with_bias}"
            y = _on(name, llmaccel.int8_linear, *args, act="dynamic")
            assert y.dtype == dtype and y.shape == (*lead, N), where
            err = (y.cpu().double().reshape(-1, N) - y64).abs()
            assert (err <= tol).all(), f"outside the quantization bound: {where}, worst {(err / tol).max()}"


@pytest.mark.triton
def test_int8_linear_dynamic_within_quantization_bound_small():
    _check_dynamic_gaussian(_linear_shapes_small())


@pytest.mark.slow
def test_int8_linear_dynamic_within_quantization_bound_large():
    _check_dynamic_gaussian(_linear_shapes_large())


def _exactly_quantized_x(lead, K, dtype):
    """(x, q, s): x = q * s[:, None] exactly in dtype, with |q| = 127 somewhere in every row (so scale = s)."""
    M = math.prod(lead)
    q = torch.randint(-127, 128, (M, K), dtype=torch.int64)
    q[torch.arange(M), torch.randint(0, K, (M,))] = 127 * (1 - 2 * torch.randint(0, 2, (M,)))
    # fp16 outputs overflow past 65504: |acc| <= 130 * 127 * 128 and w_scale <= 0.021 allow s <= 0.47 there.
    e = torch.randint(-8, -1 if dtype == torch.float16 else 4, (M,)).double()
    # bf16 keeps 8 significant bits (all taken by q): powers of two only. fp16 / fp32: 3 more bits.
    frac = 1 + torch.randint(0, 8, (M,)).double() / 8 if dtype != torch.bfloat16 else torch.ones(M, dtype=torch.float64)
    s = (2.0 ** e) * frac
    x = (q.double() * s.unsqueeze(1)).to(dtype)
    assert torch.equal(x.double(), q.double() * s.unsqueeze(1)), "x must be exact in its dtype"
    return x.reshape(*lead, K), q, s


def _check_dynamic_exact(shapes, device="cpu"):
    for i, (lead, K, N) in enumerate(shapes):
        strided = i % 2 == 1
        for dtype in FLOATS:
            for with_bias in (False, True):
                x, q, s = _exactly_quantized_x(lead, K, dtype)
                x = _layout(x, strided)
                w, w_scale, bias = _weights(N, K, dtype, with_bias, strided)
                acc = q @ w.long().t()  # exact integers
                core = acc.double() * s.unsqueeze(1) * w_scale.double().unsqueeze(0)
                b64 = bias.double() if bias is not None else torch.zeros(N, dtype=torch.float64)
                y_exact = core + b64
                tol = FP32_SLACK * (core.abs() + b64.abs()) + OUT_EPS[dtype] * y_exact.abs() + OUT_ATOL[dtype]
                args = _to(device, x, w, w_scale, bias)
                for name in _runnable("int8_linear", *args, "dynamic"):
                    where = f"{name}, {dtype}, x {tuple(x.shape)}, N={N}, bias={with_bias}"
                    qb, sb = _on(name, llmaccel.quantize_per_token, args[0])
                    assert torch.equal(qb.cpu().reshape(-1, K).long(), q), where
                    assert torch.equal(sb.cpu().reshape(-1).double(), s), where
                    y = _on(name, llmaccel.int8_linear, *args, act="dynamic")
                    assert y.dtype == dtype and y.shape == (*lead, N), where
                    err = (y.cpu().double().reshape(-1, N) - y_exact).abs()
                    assert (err <= tol).all(), f"int32 core not exact: {where}, worst {(err / tol).max()}"


@pytest.mark.triton
def test_int8_linear_dynamic_integer_core_is_exact_small():
    _check_dynamic_exact(_linear_shapes_small())


@pytest.mark.slow
def test_int8_linear_dynamic_integer_core_is_exact_large():
    _check_dynamic_exact(_linear_shapes_large())


def _check_weight_only(shapes, device="cpu"):
    for lead, K, N, dtype, with_bias, x, w, w_scale, bias, x64, wd, b64, y64 in _gaussian_cases(shapes, 0):
        tol = _fp32_slack(K) * (x64.abs() @ wd.abs().t() + b64.abs()) + OUT_EPS[dtype] * y64.abs() \
            + OUT_ATOL[dtype]
        args = _to(device, x, w, w_scale, bias)
        for name in _runnable("int8_linear", *args, "weight_only"):
            where = f"{name}, {dtype}, x {tuple(x.shape)}, N={N}, bias={with_bias}"
            y = _on(name, llmaccel.int8_linear, *args, act="weight_only")
            assert y.dtype == dtype and y.shape == (*lead, N), where
            err = (y.cpu().double().reshape(-1, N) - y64).abs()
            assert (err <= tol).all(), f"weight_only off: {where}, worst {(err / tol).max()}"


@pytest.mark.triton
def test_int8_linear_weight_only_matches_fp64_small():
    _check_weight_only(_linear_shapes_small())


@pytest.mark.slow
def test_int8_linear_weight_only_matches_fp64_large():
    _check_weight_only(_linear_shapes_large())


@pytest.mark.triton
@pytest.mark.skipif(not INTERPRET and not torch.cuda.is_available(), reason="needs the Triton interpreter or a GPU")
def test_triton_weight_only_split_k_matches_fp64():
    """The split-K (decode) path of the Triton weight-only kernel for every split count, empty splits included."""
    from llmaccel.kernels.int8_linear import weight_only_linear

    device = "cpu" if INTERPRET else "cuda"
    M, K, N = 3, 200, 9
    x = torch.randn(M, K)
    w, w_scale, bias = _weights(N, K, torch.float32, True)
    wd = _w_deq64(w, w_scale)
    y64 = x.double() @ wd.t() + bias.double()
    tol = FP32_SLACK * (x.double().abs() @ wd.abs().t() + bias.double().abs())
    for split_k in (1, 2, 3, 5, 8):
        y = weight_only_linear(x.to(device), w.to(device), w_scale.to(device), bias.to(device), split_k=split_k)
        assert ((y.cpu().double() - y64).abs() <= tol).all(), split_k


@pytest.mark.cuda
@pytest.mark.triton
@pytest.mark.skipif(INTERPRET, reason="compiled GPU kernels only (the interpreter would take minutes)")
def test_cuda_triton_int8_linear_matches_fp64():
    """The compiled Triton kernels (autotuned configs, split-K decode, tensor-core dots) on a CUDA GPU."""
    shapes = _linear_shapes_small() + [((1,), 4096, 4096), ((8,), 4096, 1000), ((256,), 4096, 2048),
                                       ((3, 100), 1000, 333)]
    _check_dynamic_gaussian(shapes, "cuda")
    _check_dynamic_exact(_linear_shapes_small() + [((64,), 130, 1000)], "cuda")
    _check_weight_only(shapes, "cuda")


# -------------------------------------------------------------------------
# Triton act="dynamic": quantization fused into the GEMM (one launch)
# -------------------------------------------------------------------------

_TRITON_DEVICE = "cpu" if INTERPRET else ("cuda" if torch.cuda.is_available() else None)
_needs_triton = pytest.mark.skipif(_TRITON_DEVICE is None, reason="needs the Triton interpreter or a GPU")


def _extreme_x(M, K, dtype, case):
    """x [M, K] in dtype (random, x3), with extreme rows when M >= 3, in a contiguous,
    transposed or strided layout (``case`` picks the layout)."""
    x = torch.randn(M, K) * 3
    if M >= 3:
        if dtype == torch.float16:
            huge, tiny = 6.0e4, 6.0e-8  # fp16: max 65504, smallest subnormal 6e-8
        else:
            huge, tiny = 3e38, 1e-40  # fp32 / bf16: near the top; subnormal (absmax / 127 too)
        x[0] = 0.0                                   # all-zero row: scale 1, q = 0
        x[1] = torch.randn(K) * (huge / 10)          # huge row: q spread over the grid...
        x[1, K // 2] = -huge                         # ...around an absmax near the top of the range
        tiny_row = torch.randn(K) * tiny  # tiny row: subnormal scale, 127 / absmax would overflow fp32
        if dtype == torch.bfloat16:
            # Normal bf16 values only: the interpreter's bf16 -> fp32 conversion mishandles bf16
            # subnormals (a GPU converts them exactly). absmax ~ 2e-37 still gives a subnormal scale.
            tiny_row = torch.sign(torch.randn(K)) * (1 + torch.rand(K)) * 1e-37
        x[M // 2 + 1 if M > 3 else 2] = tiny_row
        if M > 3:
            x[-1] = torch.randn(K) * 1e-44           # absmax / 127 underflows (fp16: to 0 already): scale 1
    x = x.to(dtype)
    if case % 3 == 1:
        x = x.t().contiguous().t()                   # transposed view: stride (1, M)
    elif case % 3 == 2:
        wide = torch.zeros(2 * M + 1, 3 * K + 2, dtype=dtype)
        wide[1::2, 2::3] = x
        x = wide[1::2, 2::3]                         # strided rows and columns
        assert x.stride() == (2 * (3 * K + 2), 3)
    return x


def _near_tie(x, s):
    """Where x / s (float64) lies within 2**-15 of a half-integer: the only places the Triton quantizer's
    (x * f) * (1 / (s * f)) -- two fp32 roundings, relative error below 2**-23, so below 2**-16 for
    |v| <= 127.5 -- may round onto the other side (module docstring of kernels/quantize.py; the quantize
    contract allows one step there)."""
    v = x.double() / s.double().unsqueeze(-1)
    return ((v - torch.floor(v) - 0.5).abs() <= 2.0**-15) & (v.abs() < 127.5)


def _epilogue(q, s, w, w_scale, bias, dtype):
    """The contract's epilogue on given (q, s), in the order and precision of int8_linear_reference."""
    acc = torch.matmul(q.double(), w.double().t()).to(torch.float32)  # exact: |acc| < 2**24 here
    y = acc * s.unsqueeze(1) * w_scale.unsqueeze(0)
    if bias is not None:
        y = y + bias.to(torch.float32)
    return y.to(dtype)


def _assert_same_y(y, expected, exact, where):
    """Bitwise under the interpreter (numpy fp32 == torch fp32); on a GPU the compiler may fuse the epilogue's
    multiply-add into an fma (one rounding instead of two), so allow a couple of fp32 ulps there."""
    assert y.dtype == expected.dtype and y.shape == expected.shape, where
    y, expected = y.cpu(), expected.cpu()
    fin = torch.isfinite(expected)
    assert torch.equal(y[~fin], expected[~fin]), f"inf positions or signs differ: {where}"
    if exact:
        diff = (y.double() - expected.double())[fin].abs().max() if fin.any() else 0.0
        assert torch.equal(y, expected), f"not bit-identical: {where}, max diff {diff}"
    else:
        e64 = expected[fin].double()
        tol = (4 * 2.0**-24 + OUT_EPS[expected.dtype]) * e64.abs() + OUT_ATOL[expected.dtype]
        assert ((y[fin].double() - e64).abs() <= tol).all(), f"off: {where}"


@pytest.mark.triton
@_needs_triton
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # huge rows: y is inf, as in the reference
def test_triton_dynamic_fused_quantization_matches_reference():
    """The fused kernel quantizes x exactly as the Triton quantize kernel does (bit for bit: same scale, same q),
    which equals the torch reference's q except at fp32 near-ties; the int32 core is exact; the epilogue has
    the reference's operation order. Odd M / K / N, strided and transposed x, fp16 / bf16, zero, huge, tiny
    and underflowing rows."""
    from llmaccel.kernels.int8_linear import int8_linear as fused
    from llmaccel.kernels.quantize import quantize_per_token as triton_quantize
    from llmaccel.ops.int8_linear import int8_linear_reference
    from llmaccel.ops.quantize import quantize_per_token_reference

    dev = _TRITON_DEVICE
    exact = INTERPRET
    case = 0
    identity_checked = False
    for iM, M in enumerate((1, 3, 17, 113)):
        for iK, K in enumerate((1, 3, 67, 129)):
            if INTERPRET and (iM + iK) % 2 == 0:
                continue  # the interpreter (25 s for all): half the (M, K) pairs, each M with two Ks and each K with two Ms
            for N in ((1, 5, 33) if M < 113 else (5, 33)):
                # In the interpreter (CI's time budget: this test alone took 72 s) every shape runs one of the
                # dtypes in turn, so each shape and each dtype is still covered; on a GPU every pair runs.
                for dtype in (FLOATS if not INTERPRET else (FLOATS[(M + K + N) % len(FLOATS)],)):
                    case += 1
                    x = _extreme_x(M, K, dtype, case)
                    with_bias = case % 2 == 0
                    w, w_scale, bias = _weights(N, K, dtype, with_bias, strided=case % 4 == 3)
                    where = f"{dtype}, x {tuple(x.shape)} strides {x.stride()}, N={N}, bias={with_bias}"
                    # The quantization the fused kernel must reproduce bit for bit: the standalone Triton kernel.
                    q_t, s_t = triton_quantize(x.to(dev))
                    q_t, s_t = q_t.cpu(), s_t.cpu()
                    q_ref, s_ref = quantize_per_token_reference(x)
                    assert torch.equal(s_t, s_ref), f"scale: {where}"
                    differ = q_t != q_ref
                    assert not (differ & ~_near_tie(x, s_ref)).any(), f"q differs away from a near-tie: {where}"
                    assert ((q_t.long() - q_ref.long()).abs() <= 1).all(), where
                    y = fused(*_to(dev, x, w, w_scale, bias), "dynamic")
                    _assert_same_y(y, _epilogue(q_t, s_t, w, w_scale, bias, dtype), exact, where)
                    # Rows without a near-tie: the torch reference itself, bit for bit (interpreter).
                    rows = ~differ.any(dim=1)
                    y_ref = int8_linear_reference(x, w, w_scale, bias, "dynamic")
                    _assert_same_y(y[rows.to(y.device)], y_ref[rows], exact, f"vs reference: {where}")
                    if dtype == torch.float32 and N == 5:
                        # Identity weight: y[m, k] = q[m, k] * s[m] (finite even for the huge row), so q is seen
                        # directly, element by element.
                        eye = torch.eye(K, dtype=torch.int8)
                        y_id = fused(*_to(dev, x, eye, torch.ones(K), None), "dynamic").cpu()
                        q_seen = torch.round(y_id.double() / s_t.double().unsqueeze(1))
                        assert torch.equal(q_seen, q_t.double()), f"identity weight: {where}"
                        identity_checked = True
    assert case > (20 if INTERPRET else 100), case
    assert identity_checked


@pytest.mark.triton
@_needs_triton
def test_triton_dynamic_is_one_kernel_launch(monkeypatch):
    """act="dynamic" on the Triton backend runs the fused kernel only: no quantize_per_token, no q temporary."""
    import triton.runtime.jit as triton_jit

    import llmaccel.kernels.int8_linear as triton_linear
    import llmaccel.kernels.quantize as triton_quantize
    from llmaccel.ops.int8_linear import int8_linear_reference

    launches = []

    def spy(cls):
        original = cls.run

        def run(self, *args, **kwargs):
            launches.append(self.fn.__name__)
            return original(self, *args, **kwargs)

        monkeypatch.setattr(cls, "run", run)

    spy(triton_jit.JITFunction)
    if INTERPRET:
        from triton.runtime.interpreter import InterpretedFunction

        spy(InterpretedFunction)

    def forbidden(*args, **kwargs):
        raise AssertionError("int8_linear(act='dynamic') must not call kernels.quantize.quantize_per_token")

    monkeypatch.setattr(triton_quantize, "quantize_per_token", forbidden)
    assert not hasattr(triton_linear, "quantize_per_token")

    dev = _TRITON_DEVICE
    x = torch.randn(2, 9, 67)
    w, w_scale, bias = _weights(33, 67, torch.float32, True)
    args = _to(dev, x, w, w_scale, bias)
    expected = int8_linear_reference(x, w, w_scale, bias, "dynamic")
    with backends.use("triton"):
        llmaccel.int8_linear(*args, act="dynamic")  # on a GPU: autotuning launches every config once
        launches.clear()
        y = llmaccel.int8_linear(*args, act="dynamic")
    assert launches == ["_w8a8_dynamic_kernel"], launches
    assert y.shape == (2, 9, 33)
    assert (y.cpu() - expected).abs().max() <= 1e-4 * expected.abs().max()


@pytest.mark.triton
@pytest.mark.parametrize("lead,K,N", [((0,), 5, 3), ((2, 0), 5, 3), ((4,), 5, 0), ((3,), 0, 2)])
def test_int8_linear_empty_dimensions(lead, K, N):
    """Zero rows, zero outputs, or K = 0 (then y = bias)."""
    for act in ("dynamic", "weight_only"):
        x = torch.randn(*lead, K)
        w, w_scale, bias = _weights(N, K, torch.float32, True)
        expected = (x.double() @ _w_deq64(w, w_scale).t() + bias.double()).float()
        for name in _runnable("int8_linear", x, w, w_scale, bias, act):
            y = _on(name, llmaccel.int8_linear, x, w, w_scale, bias, act=act)
            assert y.shape == (*lead, N) and torch.equal(y, expected), (name, act, lead, K, N)


# =========================================================================
# autograd and opcheck
# =========================================================================

@pytest.mark.triton
def test_int8_linear_autograd_matches_docstring_formulas():
    """grad_x = grad_y @ (w_int8 * w_scale[:, None]); grad_bias = grad_y summed over leading dims (both modes)."""
    K, N = 37, 11
    for dtype in (torch.float32, torch.bfloat16):
        for act in ("dynamic", "weight_only"):
            w, w_scale, bias0 = _weights(N, K, dtype, True)
            x0 = torch.randn(2, 3, K).to(dtype)
            g = torch.randn(2, 3, N).to(dtype)
            wd = _w_deq64(w, w_scale)
            g64 = g.double().reshape(-1, N)
            gx64 = g64 @ wd
            gb64 = g64.sum(0)
            tol_x = FP32_SLACK * (g64.abs() @ wd.abs()) + OUT_EPS[dtype] * gx64.abs() + OUT_ATOL[dtype]
            tol_b = FP32_SLACK * g64.abs().sum(0) + OUT_EPS[dtype] * gb64.abs() + OUT_ATOL[dtype]
            for name in _runnable("int8_linear", x0, w, w_scale, bias0, act):
                where = f"{name}, {dtype}, {act}"
                x = x0.clone().requires_grad_(True)
                bias = bias0.clone().requires_grad_(True)
                y = _on(name, llmaccel.int8_linear, x, w, w_scale, bias, act=act)
                assert y.requires_grad, where
                y.backward(g)
                assert x.grad.dtype == dtype and x.grad.shape == x.shape, where
                assert bias.grad.dtype == bias.dtype and bias.grad.shape == (N,), where
                assert ((x.grad.double().reshape(-1, K) - gx64).abs() <= tol_x).all(), f"grad_x: {where}"
                assert ((bias.grad.double() - gb64).abs() <= tol_b).all(), f"grad_bias: {where}"
                # Without bias: still a gradient for x.
                x2 = x0.clone().requires_grad_(True)
                _on(name, llmaccel.int8_linear, x2, w, w_scale, None, act=act).backward(g)
                assert ((x2.grad.double().reshape(-1, K) - gx64).abs() <= tol_x).all(), f"grad_x, no bias: {where}"


@pytest.mark.triton
def test_opcheck():
    w, w_scale, bias = _weights(5, 19, torch.float32, True)
    x = torch.randn(3, 19)
    for name in _runnable("quantize_per_token", x):
        with backends.use(name):
            torch.library.opcheck(torch.ops.llmaccel.quantize_per_token.default, (x,))
            torch.library.opcheck(torch.ops.llmaccel.quantize_per_token.default, (torch.randn(2, 1, 7),))
    for act in ("dynamic", "weight_only"):
        for b in (bias, None):
            for name in _runnable("int8_linear", x, w, w_scale, b, act):
                with backends.use(name):
                    xg = x.clone().requires_grad_(True)
                    bg = b.clone().requires_grad_(True) if b is not None else None
                    torch.library.opcheck(torch.ops.llmaccel.int8_linear.default, (xg, w, w_scale, bg, act))
                    torch.library.opcheck(torch.ops.llmaccel.int8_linear.default,
                                          (torch.randn(2, 2, 19), w, w_scale, b, act))


# =========================================================================
# bad inputs
# =========================================================================

def test_bad_inputs_raise_clear_errors():
    x = torch.randn(3, 8)
    w, w_scale, bias = _weights(5, 8, torch.float32, True)
    cases = [
        (dict(x=torch.randn(3, 7)), ValueError, r"int8_linear: x has 7 features .* w_int8 is \[N, K\] = \[5, 8\]"),
        (dict(w_int8=w.float()), TypeError, r"int8_linear: w_int8 must have dtype torch.int8"),
        (dict(w_int8=w.reshape(-1)), ValueError, r"int8_linear: w_int8 must be 2-D"),
        (dict(w_scale=w_scale[:4]), ValueError, r"int8_linear: w_scale has 4 entries, expected .* \(5\)"),
        (dict(w_scale=w_scale.double()), TypeError, r"int8_linear: w_scale must have dtype torch.float32"),
        (dict(bias=bias[:3]), ValueError, r"int8_linear: bias has 3 entries, expected 5"),
        (dict(bias=torch.ones(5, dtype=torch.int32)), TypeError, r"int8_linear: bias must be a float tensor"),
        (dict(act="int4"), ValueError, r"int8_linear: act must be one of .*'int4'"),
        (dict(x=torch.ones(3, 8, dtype=torch.int32)), TypeError, r"int8_linear: x must be float32, float16 or bf"),
        (dict(x=torch.ones(3, 8, dtype=torch.int8)), TypeError, r"int8_linear: x must be float32"),
        (dict(x="x"), TypeError, r"int8_linear: x must be a torch.Tensor"),
        (dict(w_scale=torch.empty(5, device="meta")), ValueError, r"int8_linear: all tensors must be on one device"),
    ]
    for change, exc, pattern in cases:
        args = dict(x=x, w_int8=w, w_scale=w_scale, bias=bias, act="dynamic")
        args.update(change)
        with pytest.raises(exc, match=pattern):
            llmaccel.int8_linear(args["x"], args["w_int8"], args["w_scale"], args["bias"], act=args["act"])
        if isinstance(args["x"], torch.Tensor):
            # The raw op validates too.
            with pytest.raises(Exception, match=pattern):
                torch.ops.llmaccel.int8_linear(args["x"], args["w_int8"], args["w_scale"], args["bias"], args["act"])
    for bad, exc, pattern in [
        (torch.ones(3, 4, dtype=torch.int32), TypeError, r"quantize_per_token: x must be float32"),
        (torch.tensor(1.0), ValueError, r"quantize_per_token: x must have at least one dimension"),
        (torch.randn(3, 4).double(), TypeError, r"quantize_per_token: x must be float32, float16 or bfloat16"),
    ]:
        with pytest.raises(exc, match=pattern):
            llmaccel.quantize_per_token(bad)


def test_weight_only_reference_dequantizes_in_blocks_of_output_channels():
    """The torch path of act='weight_only' (what runs above the C++ kernel's M limit) dequantizes ~4 MiB of
    weight at a time: a layer wider than one block (K = 4096: 256 channels a block, N = 600 -> 3 blocks, the
    last ragged) must give the same result as one dequantized matrix, against a float64 reference."""
    torch.manual_seed(7)
    M, K, N = 70, 4096, 600
    x = torch.randn(M, K)
    w = randint8(N, K)
    s = torch.rand(N) * 0.01 + 1e-3
    b = torch.randn(N)
    with backends.use("torch"):
        y = llmaccel.int8_linear(x, w, s, b, act="weight_only", activation="gelu")
    ref = torch.nn.functional.gelu(x.double() @ (w.double() * s.double()[:, None]).t() + b.double())
    torch.testing.assert_close(y.double(), ref, rtol=1e-4, atol=1e-4)
    assert y.shape == (M, N)
