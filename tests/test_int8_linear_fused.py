"""int8_linear's fused SmoothQuant scaling (``smooth``) and activation epilogue (``activation``).

Contract (llmaccel/ops/int8_linear.py): the row quantized is the fp32 product
``x.float() * torch.reciprocal(smooth)`` (one correctly rounded product per element), and the fp32
result gets ``activation`` before the cast to x's dtype.

* Exact codes: x is built as ``q * s_row * smooth`` with power-of-two
  ``smooth`` (so the fp32 product is exactly ``q * s_row`` and the int8 codes
  are known); every backend must reproduce the float64 product of those codes
  within the fp32 epilogue's rounding (and the activation's, below).
* Same codes as the unfused product: for Gaussian x and arbitrary smooth,
  ``int8_linear(x, smooth=s)`` on the C++ backend (every ISA variant, driven
  through the raw binding too) is bit-identical to
  ``int8_linear(x.float() * torch.reciprocal(s))``: the kernel scales exactly as torch does.

Activation tolerance.  The int8 core is exact; the pre-activation value has
the fp32 epilogue's error ``tol_pre`` (as in test_int8_linear_ops.py).  GELU
is 1.13-Lipschitz (max of its derivative, at y = sqrt 2), ReLU 1-Lipschitz, so
that error grows to at most 1.13 tol_pre; the activation's own evaluation adds
at most 1.3e-7 max(1, |y|) for csrc/activation.h (measured, see its header)
and a few fp32 ulps for torch's, bounded together by ACT_EPS = 1e-6 max(1, |y|).
"""

import math

import pytest
import torch
import torch.nn.functional as F

import llmaccel
from llmaccel import backends
from llmaccel._ext import ext
from llmaccel.ops._cpp_views import view, view_or_none
from llmaccel.ops.int8_linear import int8_linear_reference

from helpers import INTERPRET, int8_linear_backends, int8_linear_on, randint8, rotate_in_interpreter

FLOATS = (torch.float32, torch.float16, torch.bfloat16)
OUT_EPS = {torch.float32: 0.0, torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}
OUT_ATOL = {torch.float32: 1e-30, torch.float16: 2.0**-24, torch.bfloat16: 1e-30}
FP32_SLACK = 1e-5
ACT_EPS = 1e-6
ACTIVATIONS = (None, "gelu", "gelu_tanh", "relu")
VARIANTS = llmaccel.cpu_info()["available_variants"].get("int8_mm", [])


def _act64(y, activation):
    if activation is None:
        return y
    if activation == "gelu":
        return 0.5 * y * (1 + torch.erf(y / math.sqrt(2)))
    if activation == "gelu_tanh":
        return 0.5 * y * (1 + torch.tanh(math.sqrt(2 / math.pi) * (y + 0.044715 * y**3)))
    return y.clamp(min=0)


_runnable, _on = int8_linear_backends, int8_linear_on


def _layout(x, strided):
    if not strided:
        return x
    wide = torch.zeros(*x.shape[:-1], 2 * x.shape[-1], dtype=x.dtype)
    wide[..., ::2] = x
    return wide[..., ::2]


# (leading dims, K, N): decode M = 1..4 (the AVX2 decode path), odd M, a large M (several row tiles and
# threads), K and N off every vector width.
SHAPES = [((1,), 13, 7), ((2,), 67, 33), ((3,), 130, 1), ((4,), 1, 9), ((1, 4), 67, 7), ((17,), 130, 33),
          ((5, 3), 13, 5), ((300,), 67, 19), ((2, 257), 130, 7)]


def _exact_case(lead, K, N, dtype, with_bias, strided, g):
    M = math.prod(lead)
    q = torch.randint(-127, 128, (M, K), generator=g)
    q[torch.arange(M), torch.randint(0, K, (M,), generator=g)] = 127 * (1 - 2 * torch.randint(0, 2, (M,), generator=g))
    e = torch.randint(-8, -2 if dtype == torch.float16 else 3, (M,), generator=g).double()
    frac = 1 + torch.randint(0, 8, (M,), generator=g).double() / 8 if dtype != torch.bfloat16 else torch.ones(M).double()
    s_row = 2.0**e * frac
    smooth = 2.0 ** torch.randint(-3, 4, (K,), generator=g).float()
    x64 = q.double() * s_row.unsqueeze(1) * smooth.double()
    x = x64.to(dtype)
    assert torch.equal(x.double(), x64), "x must be exact in its dtype"
    x = _layout(x.reshape(*lead, K), strided)
    w = randint8(N, K)
    ws = torch.rand(N, generator=g) * 0.02 + 1e-3
    bias = (torch.randn(N, generator=g) * 0.5).to(dtype) if with_bias else None
    core = (q @ w.long().t()).double() * s_row.unsqueeze(1) * ws.double()
    b64 = bias.double() if bias is not None else torch.zeros(N, dtype=torch.float64)
    return x, w, ws, bias, smooth, core, b64


@pytest.mark.triton
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_smooth_and_activation_match_exact_codes(activation):
    g = torch.Generator().manual_seed(1)
    for i, (lead, K, N) in enumerate(SHAPES):
        # In the interpreter each shape runs one dtype in turn (47 s for the 4 activations with all three).
        for dtype in rotate_in_interpreter(FLOATS, i + ACTIVATIONS.index(activation)):
            with_bias = (i + FLOATS.index(dtype)) % 2 == 0
            x, w, ws, bias, smooth, core, b64 = _exact_case(lead, K, N, dtype, with_bias, i % 2 == 1, g)
            pre = core + b64
            y64 = _act64(pre, activation)
            tol_pre = FP32_SLACK * (core.abs() + b64.abs())
            tol = 1.13 * tol_pre + ACT_EPS * pre.abs().clamp(min=1) * (activation is not None) \
                + OUT_EPS[dtype] * y64.abs() + OUT_ATOL[dtype]
            for name in _runnable(x, w, ws, bias, act="dynamic", smooth=smooth, activation=activation):
                where = f"{name}, {dtype}, x {tuple(x.shape)} strides {x.stride()}, N={N}, {activation}"
                y = _on(name, x, w, ws, bias, act="dynamic", smooth=smooth, activation=activation)
                assert y.dtype == dtype and y.shape == (*lead, N), where
                err = (y.double().reshape(-1, N) - y64).abs()
                assert (err <= tol).all(), f"{where}: worst {(err / tol).max()}"


@pytest.mark.triton
@pytest.mark.parametrize("act", ["dynamic", "weight_only"])
def test_smooth_is_the_fp32_product_with_the_reciprocal(act):
    """Backends that quantize the same way give the same result with smooth= as on x.float() * (1 / smooth)."""
    g = torch.Generator().manual_seed(2)
    for i, (lead, K, N) in enumerate(SHAPES):
        x = _layout(torch.randn(*lead, K, generator=g) * 3, i % 2 == 0)
        smooth = torch.rand(K, generator=g) * 4 + 0.05
        w = randint8(N, K)
        ws = torch.rand(N, generator=g) * 0.02 + 1e-3
        bias = torch.randn(N, generator=g)
        for name in _runnable(x, w, ws, bias, act=act, smooth=smooth):
            fused = _on(name, x, w, ws, bias, act=act, smooth=smooth)
            unfused = _on(name, x * torch.reciprocal(smooth), w, ws, bias, act=act)
            assert torch.equal(fused, unfused), (name, act, lead, K, N)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("nthreads", [1, 2, 3])
def test_cpp_variants_smooth_and_activation(variant, nthreads):
    """The raw binding, every ISA variant, plain and packed weights: smooth gives the codes of the fp32
    product x * (1 / smooth) (bit-identical to passing it), and the epilogue's activation stays within ACT_EPS of
    torch's applied to the same pre-activation output."""
    g = torch.Generator().manual_seed(3)
    for M, K, N in [(1, 1, 1), (1, 67, 13), (2, 130, 7), (3, 33, 5), (4, 200, 9), (5, 64, 33), (97, 130, 21),
                    (300, 384, 40)]:
        x = torch.randn(M, K, generator=g) * 3
        x[0, 0] = 40.0  # an outlier channel, as SmoothQuant sees
        smooth = torch.rand(K, generator=g) * 4 + 0.05
        w = torch.randint(-127, 128, (N, K), dtype=torch.int8, generator=g)
        ws = torch.rand(N, generator=g) * 0.02 + 1e-3
        b = torch.randn(N, generator=g)
        for packed in (False, True):
            p = _packed(w, variant) if packed else None
            base = _run(x * torch.reciprocal(smooth), w, ws, b, variant, nthreads, p)
            fused = _run(x, w, ws, b, variant, nthreads, p, smooth=smooth)
            assert torch.equal(base, fused), (variant, M, K, N, packed)
            for activation in ACTIVATIONS[1:]:
                y = _run(x, w, ws, b, variant, nthreads, p, smooth=smooth, activation=activation)
                ref = _act64(base.double(), activation)
                tol = ACT_EPS * base.double().abs().clamp(min=1)
                assert ((y.double() - ref).abs() <= tol).all(), (variant, M, K, N, packed, activation)


def _packed(w, variant):
    N, K = w.shape
    out = torch.empty(ext().int8_mm_packed_size(variant, N, K), dtype=torch.int8)
    ext().int8_mm_pack_b(variant, view(w), view(out), 2)
    return out


def _run(x, w, ws, b, variant, nthreads, packed=None, smooth=None, activation=""):
    y = torch.full((x.shape[0], w.shape[0]), float("nan"))
    ext().int8_linear_dynamic(view(x), view(w), view_or_none(packed), view(ws), view_or_none(b), view(y), nthreads,
                              variant, view_or_none(smooth), activation or "")
    return y


def test_activation_dense_sweep_through_the_epilogue():
    """GELU / GELU-tanh / ReLU of a dense sweep of pre-activation values, through the C++ epilogue: with x = 0
    (K = 1) the output is act(0 * x_scale * w_scale + bias) = act(bias) exactly, so bias carries the sweep
    (including |y| up to 1e4, +-inf and NaN).  M = 1 runs ragged (scalar-epilogue) tiles, M = 4 the AVX2
    decode path's full tile (its vector epilogue), M = 9 the blocked driver with both: every row must be
    bit-identical (the vector form performs the scalar form's operations) and within 2e-7 max(1, |y|) of the
    float64 activation (csrc/activation.h measures 1.1e-7 for GELU, 1.3e-7 for GELU-tanh)."""
    sweep = torch.cat([torch.arange(-12, 12, 1e-4, dtype=torch.float64).float(), torch.logspace(-30, 4, 2000),
                       -torch.logspace(-30, 4, 2000), torch.tensor([0.0, -0.0, 1e30, -1e30])])
    N = sweep.numel()
    w, ws = torch.ones(N, 1, dtype=torch.int8), torch.ones(N)
    for variant in VARIANTS:
        for activation in ACTIVATIONS[1:]:
            ref = _act64(sweep.double(), activation)
            first = None
            for M in (1, 4, 9):
                y = _run(torch.zeros(M, 1), w, ws, sweep, variant, 2, activation=activation)
                first = y[0] if first is None else first
                assert torch.equal(y, first.expand(M, N)), (variant, activation, M)
            err = (first.double() - ref).abs() / sweep.double().abs().clamp(min=1)
            assert err.max() <= 2e-7, (variant, activation, err.max().item(), sweep[err.argmax()].item())
    special = torch.tensor([float("inf"), float("nan"), -1.0, 0.5, float("nan"), -0.0, 3.0, -2.0])
    for M in (1, 4):
        y = _run(torch.zeros(M, 1), torch.ones(8, 1, dtype=torch.int8), torch.ones(8), special, VARIANTS[0], 1,
                 activation="gelu")[-1]
        assert y[0] == float("inf") and math.isnan(y[1]) and math.isnan(y[4]) and abs(y[2] + 0.158655254) < 1e-7


def test_activation_autograd_matches_float_reference():
    torch.manual_seed(4)
    x = torch.randn(5, 33)
    smooth = torch.rand(33) + 0.5
    w = randint8(9, 33)
    ws = torch.rand(9) * 0.02 + 1e-3
    bias = torch.randn(9)
    wd = w.double() * ws.double().unsqueeze(1)
    for activation in ACTIVATIONS:
        for name in _runnable(x, w, ws, bias, act="dynamic", smooth=smooth, activation=activation):
            xg = x.clone().requires_grad_(True)
            bg = bias.clone().requires_grad_(True)
            gy = torch.randn(5, 9)
            _on(name, xg, w, ws, bg, act="dynamic", smooth=smooth, activation=activation).backward(gy)
            # Straight-through quantization: d act(pre) / d pre at the op's own pre-activation output.
            pre = int8_linear_reference(x, w, ws, bias, "dynamic", smooth, None).double().requires_grad_(True)
            gpre, = torch.autograd.grad(_act64(pre, activation), pre, gy.double())
            gx = (gpre @ wd) * torch.reciprocal(smooth).double()
            assert torch.allclose(xg.grad.double(), gx, rtol=1e-5, atol=1e-6), (name, activation)
            assert torch.allclose(bg.grad.double(), gpre.sum(0), rtol=1e-5, atol=1e-6), (name, activation)


@pytest.mark.triton
def test_opcheck_with_smooth_and_activation():
    w = randint8(5, 19)
    ws = torch.rand(5) * 0.02 + 1e-3
    bias = torch.randn(5)
    smooth = torch.rand(19) + 0.5
    x = torch.randn(3, 19)
    for activation in ("gelu", "relu"):
        for name in _runnable(x, w, ws, bias, act="dynamic", smooth=smooth, activation=activation):
            with backends.use(name):
                torch.library.opcheck(torch.ops.llmaccel.int8_linear.default,
                                      (x.clone().requires_grad_(True), w, ws, bias, "dynamic", smooth, activation))
                torch.library.opcheck(torch.ops.llmaccel.int8_linear.default,
                                      (torch.randn(2, 2, 19), w, ws, None, "dynamic", smooth, activation))


def test_bad_smooth_and_activation_raise():
    x = torch.randn(3, 8)
    w = randint8(5, 8)
    ws = torch.rand(5) + 0.01
    good = torch.rand(8) + 0.5
    bad = [
        (good[:7], ValueError, r"int8_linear: smooth has 7 entries, expected one per input channel \(K = 8\)"),
        (good.double(), TypeError, r"int8_linear: smooth must have dtype torch.float32"),
        (good.reshape(2, 4), ValueError, r"int8_linear: smooth must be 1-D"),
        ("s", TypeError, r"int8_linear: smooth must be a torch.Tensor"),
    ]
    for value in (0.0, -1.0, float("nan"), float("inf")):
        s = good.clone()
        s[5] = value
        bad.append((s, ValueError, r"int8_linear: smooth must be finite and > 0"))
    for act in ("dynamic", "weight_only"):
        for s, exc, pattern in bad:
            with pytest.raises(exc, match=pattern):
                llmaccel.int8_linear(x, w, ws, None, act=act, smooth=s)
    for activation in ("GELU", "silu", ""):
        with pytest.raises(ValueError, match=r"int8_linear: activation must be one of .*"):
            llmaccel.int8_linear(x, w, ws, activation=activation)
    # The C++ layer validates what it is handed (a pointer carries no length or dtype: values and name).
    for value in (0.0, -2.0, float("nan"), float("-inf")):
        s = good.clone()
        s[3] = value
        with pytest.raises(ValueError, match=r"llmaccel::int8_linear: smooth must be finite and > 0.*smooth\[3\]"):
            _run(x, w, ws, None, "", 2, smooth=s)
    with pytest.raises(ValueError, match=r"llmaccel::int8_linear: activation must be one of .*'silu'"):
        _run(x, w, ws, None, "", 2, activation="silu")
