"""int8_linear's ``residual``: ``y = activation(x @ W.T + b) + residual``, the skip connection in the epilogue.

Contract (llmaccel/ops/int8_linear.py): the residual is added to the fp32 result after the activation, one fp32
rounding, before the cast to x's dtype.  So on every backend the call with a residual is bit-identical to the
same call without one followed by torch's fp32 ``y + residual`` (then the cast), and against float64 it
carries the product's error plus one rounding of the sum.  The C++ kernels add it in the epilogue of every
tile shape (outer-product tiles, dot-product tiles and their scalar edges, the AVX2 decode tile, AMX blocks):
the raw binding is checked on every ISA variant, packed and plain weights, 1-3 threads.
"""

import math

import pytest
import torch

import llmaccel
from llmaccel import backends
from llmaccel._ext import ext
from llmaccel.nn import Int8Linear
from llmaccel.ops._cpp_views import view, view_or_none
from llmaccel.ops.quantize import quantize_per_token_reference

from helpers import INTERPRET, int8_linear_backends, int8_linear_on, randint8

VARIANTS = llmaccel.cpu_info()["available_variants"].get("int8_mm", [])
ACTIVATIONS = (None, "gelu", "relu")
# (leading dims, K, N): decode rows, odd sizes, several row tiles and threads, K and N off every vector width.
SHAPES = [((1,), 13, 7), ((3,), 67, 33), ((4,), 130, 17), ((2, 9), 50, 113), ((113,), 96, 40), ((300,), 384, 37)]


_runnable, _on = int8_linear_backends, int8_linear_on


def _strided(t):
    """The same values with a row stride wider than the row (a column slice of a wider tensor)."""
    wide = torch.randn(*t.shape[:-1], t.shape[-1] + 5).to(t.dtype)
    wide[..., : t.shape[-1]] = t
    return wide[..., : t.shape[-1]]


@pytest.mark.triton
@pytest.mark.parametrize("act", ["dynamic", "weight_only"])
def test_residual_is_added_after_the_activation_on_every_backend(act):
    """fp32: bit-identical to the unfused ``y + residual`` and within the fp32 epilogue's error of float64.
    bf16 x and residual: exactly the fp32 call on the widened inputs, rounded once (the contract's order)."""
    g = torch.Generator().manual_seed(0)
    for i, (lead, K, N) in enumerate(SHAPES):
        if INTERPRET and math.prod(lead) * K * N > 2_000_000:
            continue  # the interpreter runs the smaller shapes
        x = torch.randn(*lead, K, generator=g) * 2
        w = randint8(N, K)
        ws = torch.rand(N, generator=g) * 0.02 + 1e-3
        bias = torch.randn(N, generator=g)
        r = torch.randn(*lead, N, generator=g) * 3
        if i % 2:
            r = _strided(r)
        wd = w.double() * ws.double().unsqueeze(1)
        xq = x.reshape(-1, K)
        if act == "dynamic":  # the codes (exact for fp32 Gaussian x: no ties), dequantized in float64
            q, s_row = quantize_per_token_reference(xq)
            xq = q.double() * s_row.double().unsqueeze(1)
        pre = xq.double() @ wd.t() + bias.double()
        absdot = xq.double().abs() @ wd.abs().t() + bias.double().abs()
        r2 = r.reshape(-1, N).double()
        xb, rb = x.bfloat16(), r.bfloat16()
        for activation in ACTIVATIONS:
            # float64 truth; the fp32 epilogue's error through a 1.13-Lipschitz activation, plus one rounding
            # of the activation and of the sum
            ref = _act64(pre, activation) + r2
            tol = 1e-5 * (1.13 * absdot + r2.abs()) + 1e-6 * pre.abs().clamp(min=1)
            for name in _runnable(x, w, ws, bias, act=act, activation=activation, residual=r):
                where = f"{name}, {act}, {activation}, x {tuple(x.shape)}, N={N}"
                y = _on(name, x, w, ws, bias, act=act, activation=activation, residual=r)
                y0 = _on(name, x, w, ws, bias, act=act, activation=activation)
                assert y.dtype == torch.float32 and y.shape == (*lead, N), where
                assert torch.equal(y, y0 + r), where
                err = (y.double().reshape(-1, N) - ref).abs()
                assert (err <= tol).all(), f"{where}: worst {(err / tol).max()}"
                yb = _on(name, xb, w, ws, bias, act=act, activation=activation, residual=rb)
                yf = _on(name, xb.float(), w, ws, bias, act=act, activation=activation, residual=rb.float())
                assert yb.dtype == torch.bfloat16 and torch.equal(yb, yf.bfloat16()), where + ", bf16"


def _act64(y, activation):
    if activation is None:
        return y
    if activation == "gelu":
        return 0.5 * y * (1 + torch.erf(y / math.sqrt(2)))
    return y.clamp(min=0)


def _packed(w, variant):
    N, K = w.shape
    out = torch.empty(ext().int8_mm_packed_size(variant, N, K), dtype=torch.int8)
    ext().int8_mm_pack_b(variant, view(w), view(out), 2)
    return out


def _run(x, w, ws, b, variant, nthreads, packed=None, activation="", residual=None, y=None):
    y = torch.full((x.shape[0], w.shape[0]), float("nan")) if y is None else y
    ext().int8_linear_dynamic(view(x), view(w), view_or_none(packed), view(ws), view_or_none(b), view(y), nthreads,
                              variant, None, activation or "", view_or_none(residual))
    return y


@pytest.mark.parametrize("variant", VARIANTS)
def test_cpp_variants_add_the_residual_in_every_tile(variant):
    """Every ISA variant through the raw binding: M = 1-4 (decode tiles), ragged row tiles, M large enough for
    per-thread row blocks; N off the panel widths (masked / scalar edges); strided residual rows; extreme
    residual values (+-1e30, inf) pass through the add unchanged in kind."""
    g = torch.Generator().manual_seed(1)
    for M, K, N in [(1, 67, 13), (2, 130, 7), (3, 33, 5), (4, 200, 16), (7, 64, 33), (97, 130, 21),
                    (300, 384, 40), (1000, 96, 64), (2100, 40, 19)]:
        x = torch.randn(M, K, generator=g) * 3
        w = torch.randint(-128, 128, (N, K), dtype=torch.int8, generator=g)
        ws = torch.rand(N, generator=g) * 0.02 + 1e-3
        b = torch.randn(N, generator=g)
        r = _strided(torch.randn(M, N, generator=g) * 4)
        r[0, 0], r[-1, -1] = 1e30, float("-inf")
        for nthreads in (1, 2, 3):
            for packed in (False, True):
                p = _packed(w, variant) if packed else None
                for activation in ("", "gelu"):
                    base = _run(x, w, ws, b, variant, nthreads, p, activation)
                    fused = _run(x, w, ws, b, variant, nthreads, p, activation, residual=r)
                    assert torch.equal(fused, base + r), (variant, M, K, N, nthreads, packed, activation)
        # in place: the residual is the output buffer itself
        y = r.clone()
        _run(x, w, ws, b, variant, 2, _packed(w, variant), "", residual=y, y=y)
        assert torch.equal(y, _run(x, w, ws, b, variant, 2) + r), (variant, M, K, N, "in place")


def test_residual_gradient_is_the_output_gradient():
    torch.manual_seed(2)
    x = torch.randn(5, 33)
    w = randint8(9, 33)
    ws = torch.rand(9) * 0.02 + 1e-3
    bias = torch.randn(9)
    for act in ("dynamic", "weight_only"):
        for name in _runnable(x, w, ws, bias, act=act, residual=torch.randn(5, 9)):
            xg, rg = x.clone().requires_grad_(True), torch.randn(5, 9, requires_grad=True)
            x0 = x.clone().requires_grad_(True)
            gy = torch.randn(5, 9)
            _on(name, xg, w, ws, bias, act=act, activation="gelu", residual=rg).backward(gy)
            _on(name, x0, w, ws, bias, act=act, activation="gelu").backward(gy)
            assert torch.equal(rg.grad, gy), (name, act)
            assert torch.equal(xg.grad, x0.grad), (name, act)
            rh = torch.randn(5, 9, dtype=torch.float64, requires_grad=True)
            _on(name, x, w, ws, bias, act=act, residual=rh).sum().backward()
            assert rh.grad.dtype == torch.float64 and torch.equal(rh.grad, torch.ones(5, 9, dtype=torch.float64))


@pytest.mark.triton
def test_opcheck_with_residual():
    w = randint8(5, 19)
    ws = torch.rand(5) * 0.02 + 1e-3
    bias = torch.randn(5)
    x = torch.randn(3, 19)
    for name in _runnable(x, w, ws, bias, act="dynamic", residual=torch.randn(3, 5)):
        with backends.use(name):
            torch.library.opcheck(torch.ops.llmaccel.int8_linear.default,
                                  (x.clone().requires_grad_(True), w, ws, bias, "dynamic", None, "gelu",
                                   torch.randn(3, 5, requires_grad=True)))
            torch.library.opcheck(torch.ops.llmaccel.int8_linear.default,
                                  (torch.randn(2, 2, 19), w, ws, None, "dynamic", None, None, torch.randn(2, 2, 5)))


def test_module_residual_matches_the_unfused_add():
    torch.manual_seed(3)
    lin = torch.nn.Linear(48, 20)
    m = Int8Linear.from_linear(lin, act="dynamic", activation="gelu")
    for shape in [(1, 48), (3, 7, 48), (257, 48)]:
        x = torch.randn(*shape)
        r = torch.randn(*shape[:-1], 20)
        assert torch.equal(m(x, r), m(x) + r), shape
        assert torch.equal(m(x, residual=r), m(x) + r), shape
    with torch.inference_mode():
        x, r = torch.randn(4, 48), torch.randn(4, 20)
        assert torch.equal(m(x, r), m(x) + r)


def test_bad_residual_raises():
    x = torch.randn(3, 8)
    w = randint8(5, 8)
    ws = torch.rand(5) + 0.01
    cases = [
        (torch.randn(3, 4), ValueError, r"int8_linear: residual must have the output's shape \(3, 5\), got \(3, 4\)"),
        (torch.randn(5), ValueError, r"int8_linear: residual must have the output's shape"),
        (torch.ones(3, 5, dtype=torch.int32), TypeError, r"int8_linear: residual must be a float tensor"),
        ("r", TypeError, r"int8_linear: residual must be a torch.Tensor"),
    ]
    for act in ("dynamic", "weight_only"):
        for r, exc, pattern in cases:
            with pytest.raises(exc, match=pattern):
                llmaccel.int8_linear(x, w, ws, None, act=act, residual=r)
    # The C++ layer validates what it is handed.
    y = torch.empty(3, 5)
    with pytest.raises(ValueError, match=r"int8_linear_dynamic: residual must have shape"):
        _run(x, w, ws, None, "", 2, residual=torch.randn(3, 6))
    with pytest.raises(ValueError, match=r"residual .*dtype|residual must have dtype|residual.*float32"):
        _run(x, w, ws, None, "", 2, residual=torch.randn(3, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"int8_linear: residual overlaps out"):
        big = torch.zeros(4, 5)
        _run(x, w, ws, None, "", 2, residual=big[1:], y=big[:3])
    with pytest.raises(ValueError, match=r"residual must have contiguous rows"):
        _run(x, w, ws, None, "", 2, residual=torch.randn(5, 3).t(), y=y)
