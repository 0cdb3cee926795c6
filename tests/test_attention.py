"""llmaccel.attention: every backend against a float64 reference, with flash-attention's error rule.

Each property is one test looping over every backend that
``llmaccel.backends.explain`` accepts for the call here: the torch reference
always, "cpp" once csrc/ provides ``attention_fwd``, "triton" under
TRITON_INTERPRET=1 once kernels/attention.py exists (and compiled on a CUDA
GPU in the ``cuda``-marked test).  Refused backends are skipped, so the
kernels are covered as they land.

Accuracy rule (flash-attention's tests, ../shared/research/attention.md §4):
for outputs and for dq / dk / dv (/ dmask)::

    max|ours - ref64| <= 2 * max|sdpa_same_dtype - ref64| + floor * max(1, max|ref64|)

with ref64 a naive float64 implementation (autograd for the gradients),
sdpa_same_dtype ``F.scaled_dot_product_attention`` in the input dtype, and
floor 1e-5 (fp32) / 1e-3 (fp16, bf16).
"""

import importlib
import importlib.util
import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import llmaccel
from llmaccel import backends
attn_mod = importlib.import_module("llmaccel.ops.attention")
attn_ref = importlib.import_module("llmaccel.ops.attention_reference")

from helpers import INTERPRET

FLOATS = (torch.float32, torch.float16, torch.bfloat16)
FLOOR = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-3}
OP = "attention"


def _triton_kernel_present():
    try:
        if importlib.util.find_spec("llmaccel.kernels.attention") is None:
            return False
        return hasattr(importlib.import_module("llmaccel.kernels.attention"), "attention_fwd")
    except Exception:
        return False


def _runnable(*op_args):
    """Backends that would run ``torch.ops.llmaccel.attention(*op_args)`` here when requested explicitly."""
    names = []
    for name in backends.BACKENDS:
        with backends.use(name):
            if backends.explain(OP, *op_args).backend == name:
                names.append(name)
    assert "torch" in names
    dropout_p = op_args[4]
    if (INTERPRET or op_args[0].is_cuda) and dropout_p == 0 and _triton_kernel_present():
        assert "triton" in names, backends.explain(OP, *op_args)
    return names


def _on(name, fn, *args, **kwargs):
    with backends.use(name):
        return fn(*args, **kwargs)


# -------------------------------------------------------------------------
# references
# -------------------------------------------------------------------------

def _allowed(B, Hq, Lq, Lk, mask, is_causal, bottom_right):
    allowed = torch.ones(B, Hq, Lq, Lk, dtype=torch.bool)
    if mask is not None and mask.dtype == torch.bool:
        allowed = allowed & mask.cpu()
    if is_causal:
        allowed = allowed & torch.ones(Lq, Lk, dtype=torch.bool).tril(Lk - Lq if bottom_right else 0)
    return allowed


def _naive64(q, k, v, mask, is_causal=False, bottom_right=False, scale=None, keep=None, p=0.0):
    """Naive float64 attention (full Lq x Lk matrix; differentiable): (out, lse)."""
    B, Hq, Lq, D = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    scale = 1 / math.sqrt(D) if scale is None else scale
    k = k.repeat_interleave(Hq // Hkv, 1)
    v = v.repeat_interleave(Hq // Hkv, 1)
    s = (q @ k.transpose(-1, -2)) * scale
    if mask is not None and mask.dtype != torch.bool:
        s = s + mask
    s = s.masked_fill(~_allowed(B, Hq, Lq, Lk, mask, is_causal, bottom_right), float("-inf"))
    m = s.detach().amax(-1, keepdim=True) if Lk else s.new_zeros(B, Hq, Lq, 1)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    e = torch.exp(s - m)
    den = e.sum(-1, keepdim=True)
    lse = (torch.log(den) + m).squeeze(-1)
    pm = e / torch.where(den > 0, den, torch.ones_like(den))
    if keep is not None:
        pm = pm * keep / (1 - p)
    return pm @ v, lse


def _sdpa(q, k, v, mask, is_causal, bottom_right, scale):
    """torch's SDPA in the inputs' dtype (bottom-right causal as an explicit mask); NaN rows -> 0."""
    B, Hq, Lq, _ = q.shape
    Lk = k.shape[2]
    if is_causal and bottom_right:
        mask, is_causal = torch.ones(Lq, Lk, dtype=torch.bool).tril(Lk - Lq), False
    if mask is not None and mask.dtype != torch.bool:
        mask = mask.to(q.dtype)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, scale=scale,
                                         enable_gqa=k.shape[1] != Hq)
    return out


def _check(label, ours, ref64, base, dtype, where):
    ours = ours.detach().double().cpu()
    assert not torch.isnan(ours).any(), f"{label}: NaN in {where}"
    ref_max = ref64.abs().max().item() if ref64.numel() else 0.0
    err = (ours - ref64).abs().max().item() if ref64.numel() else 0.0
    err_base = (torch.nan_to_num(base.detach().double().cpu()) - ref64).abs().max().item() if ref64.numel() else 0.0
    tol = 2 * err_base + FLOOR[dtype] * max(1.0, ref_max)
    assert err <= tol, f"{label}: max err {err:.3g} > {tol:.3g} (sdpa err {err_base:.3g}): {where}"


# -------------------------------------------------------------------------
# inputs
# -------------------------------------------------------------------------

def _tensor(B, H, L, E, dtype, layout):
    if layout == "blhd":  # [B, L, H, D] storage seen as [B, H, L, D]: non-contiguous
        return torch.randn(B, L, H, E).to(dtype).transpose(1, 2)
    return torch.randn(B, H, L, E).to(dtype)


def _mask(kind, B, Hq, Lq, Lk, dtype):
    if kind is None:
        return None
    if kind == "bool":
        return torch.rand(B, Hq, Lq, Lk) > 0.3
    if kind == "bool2d":
        return torch.rand(Lq, Lk) > 0.3
    if kind == "bool_bcast":   # key padding [B, 1, 1, Lk]
        m = torch.rand(B, 1, 1, Lk) > 0.2
        m[..., 0] = True
        return m
    if kind == "float_bcast":
        return torch.randn(1, Hq, 1, Lk).to(dtype)
    if kind == "float":        # with -inf entries
        m = torch.randn(B, 1, Lq, Lk)
        m[torch.rand(B, 1, Lq, Lk) < 0.2] = float("-inf")
        return m.to(dtype)
    if kind == "float32_t":    # fp32 mask (any dtype allowed), non-contiguous
        return torch.randn(B, Hq, Lk, Lq).transpose(-1, -2)
    if kind == "fullrow_bool":
        m = torch.rand(B, Hq, Lq, Lk) > 0.3
        m[:, :, 0] = False
        m[:, :, -1] = False
        m[0, 0, Lq // 2] = False
        return m
    if kind == "fullrow_float":
        m = torch.randn(1, Hq, Lq, Lk).to(dtype)
        m[:, :, 0] = float("-inf")
        m[0, -1, Lq // 2] = float("-inf")
        return m
    raise ValueError(kind)


# (B, Hq, Hkv, Lq, Lk, D, Dv, causal, mask, layout, dtype); causal: None, "tl" (top-left) or "br" (bottom-right)
SMALL_CASES = [
    (1, 1, 1, 1, 1, 16, 16, None, None, "bhld", torch.float32),
    (2, 4, 2, 17, 17, 16, 16, "tl", None, "blhd", torch.float32),
    (1, 4, 1, 17, 113, 64, 64, "br", None, "bhld", torch.float16),
    (2, 2, 2, 113, 17, 80, 80, None, "bool", "bhld", torch.float32),
    (1, 3, 3, 17, 33, 16, 16, None, "bool2d", "blhd", torch.bfloat16),
    (2, 4, 2, 17, 17, 64, 64, None, "float_bcast", "blhd", torch.float16),
    (2, 2, 1, 17, 24, 16, 16, None, "fullrow_bool", "bhld", torch.float32),
    (1, 2, 2, 17, 24, 16, 16, None, "fullrow_float", "bhld", torch.float32),
    (1, 2, 1, 17, 5, 16, 16, "br", None, "bhld", torch.float32),     # Lq > Lk: first 12 rows fully masked
    (1, 1, 1, 239, 1, 16, 16, None, None, "bhld", torch.float32),
    (2, 2, 2, 17, 33, 16, 32, None, "float32_t", "blhd", torch.float16),  # Dv != D, fp32 mask with fp16 q
    (2, 2, 1, 33, 17, 16, 16, None, "bool_bcast", "blhd", torch.float32),
    (1, 2, 2, 17, 17, 16, 16, None, "float", "bhld", torch.float32),
]


def _large_cases():
    cases = []
    seqs = [(1, 1), (17, 17), (113, 203), (239, 1), (1, 239), (239, 239), (300, 113), (113, 300)]
    heads = [(1, 1), (4, 4), (4, 2), (6, 1)]
    combos = itertools.product(seqs, (16, 64, 80), (None, "tl", "br"),
                               (None, "bool", "bool2d", "float_bcast", "float", "fullrow_bool", "float32_t"))
    for i, ((Lq, Lk), D, causal, mask) in enumerate(combos):
        if causal and mask:
            continue
        Hq, Hkv = heads[i % len(heads)]
        B = 1 + i % 2
        dtype = FLOATS[i % 3]
        layout = "blhd" if i % 4 == 1 else "bhld"
        cases.append((B, Hq, Hkv, Lq, Lk, D, D, causal, mask, layout, dtype))
    return cases


def _make(case, requires_grad=False):
    B, Hq, Hkv, Lq, Lk, D, Dv, causal, mask_kind, layout, dtype = case
    q = _tensor(B, Hq, Lq, D, dtype, layout)
    k = _tensor(B, Hkv, Lk, D, dtype, layout)
    v = _tensor(B, Hkv, Lk, Dv, dtype, layout)
    mask = _mask(mask_kind, B, Hq, Lq, Lk, dtype)
    kw = dict(is_causal=causal is not None, bottom_right=causal == "br")
    return q, k, v, mask, kw


def _op_args(q, k, v, mask, kw, dropout_p=0.0, scale=None):
    return (q, k, v, mask, dropout_p, kw["is_causal"], scale, k.shape[1] != q.shape[1], kw["bottom_right"])


def _call(q, k, v, mask, kw, scale=None, dropout_p=0.0):
    return llmaccel.attention(q, k, v, mask, dropout_p, kw["is_causal"], scale, k.shape[1] != q.shape[1],
                              causal_bottom_right=kw["bottom_right"], return_lse=True)


# -------------------------------------------------------------------------
# forward: out and lse
# -------------------------------------------------------------------------

def _check_forward(cases, device="cpu"):
    for case in cases:
        q, k, v, mask, kw = _make(case)
        dtype = q.dtype
        m64 = mask.double() if mask is not None and mask.dtype != torch.bool else mask
        out64, lse64 = _naive64(q.double(), k.double(), v.double(), m64, kw["is_causal"], kw["bottom_right"])
        base = _sdpa(q, k, v, mask, kw["is_causal"], kw["bottom_right"], None)
        dead = ~_allowed(*q.shape[:3], k.shape[2], mask, kw["is_causal"], kw["bottom_right"]).any(-1)
        if mask is not None and mask.dtype != torch.bool:
            dead = dead | torch.isinf(mask.expand(*q.shape[:3], k.shape[2]).float()).all(-1)
        dev = [t.to(device) if t is not None else None for t in (q, k, v, mask)]
        for name in _runnable(*_op_args(*dev, kw)):
            where = f"{name}, case {case}"
            out, lse = _on(name, _call, *dev, kw)
            assert out.dtype == dtype and out.shape == (*q.shape[:3], v.shape[3]), where
            assert lse.dtype == torch.float32 and lse.shape == q.shape[:3], where
            out, lse = out.cpu(), lse.cpu()
            _check("out", out, out64, base, dtype, where)
            assert (out[dead] == 0).all(), f"fully masked rows must give 0: {where}"
            assert (lse[dead] == float("-inf")).all(), f"fully masked rows must give lse = -inf: {where}"
            live = ~dead
            err = (lse[live].double() - lse64[live]).abs()
            tol = 1e-5 * (1 + lse64[live].abs()) + 1e-5
            assert (err <= tol).all(), f"lse off by {err.max() if err.numel() else 0:.3g}: {where}"


@pytest.mark.triton
def test_forward_matches_fp64_small():
    _check_forward(SMALL_CASES)


@pytest.mark.slow
def test_forward_matches_fp64_large():
    _check_forward(_large_cases()[::2])


@pytest.mark.triton
def test_explicit_scale_and_empty_sizes():
    q, k, v = torch.randn(1, 2, 5, 16), torch.randn(1, 2, 7, 16), torch.randn(1, 2, 7, 8)
    out64, lse64 = _naive64(q.double(), k.double(), v.double(), None, scale=0.37)
    for name in _runnable(q, k, v, None, 0.0, False, 0.37, False, False):
        out, lse = _on(name, llmaccel.attention, q, k, v, scale=0.37, return_lse=True)
        assert (out.double() - out64).abs().max() <= 1e-5, name
        assert (lse.double() - lse64).abs().max() <= 1e-5, name
    for (B, Hq, Lq, Lk) in ((0, 2, 3, 4), (1, 0, 3, 4), (1, 2, 0, 4), (1, 2, 3, 0)):
        q, k, v = torch.randn(B, Hq, Lq, 8), torch.randn(B, Hq, Lk, 8), torch.randn(B, Hq, Lk, 4)
        for name in _runnable(q, k, v, None, 0.0, False, None, False, False):
            out, lse = _on(name, llmaccel.attention, q, k, v, return_lse=True)
            assert out.shape == (B, Hq, Lq, 4) and lse.shape == (B, Hq, Lq), name
            assert (out == 0).all() and (lse == float("-inf")).all(), name


def test_output_is_stored_heads_inner_on_every_backend():
    """Every backend returns out [B, Hq, Lq, Dv] stored as [B, Lq, Hq, Dv] (ops/attention.py: out_empty), so
    merging the heads back (what a transformer does next) is a view, and the values are unchanged by it."""
    q, k, v = torch.randn(2, 3, 5, 16), torch.randn(2, 3, 7, 16), torch.randn(2, 3, 7, 8)
    out64, _ = _naive64(q.double(), k.double(), v.double(), None)
    for dtype in (torch.float32, torch.bfloat16):
        for name in _runnable(q.to(dtype), k.to(dtype), v.to(dtype), None, 0.0, False, None, False, False):
            out = _on(name, llmaccel.attention, q.to(dtype), k.to(dtype), v.to(dtype))
            assert out.shape == (2, 3, 5, 8) and out.dtype == dtype, name
            assert out.transpose(1, 2).is_contiguous(), (name, dtype, out.stride())
            merged = out.transpose(1, 2).reshape(2, 5, 24)
            assert merged.data_ptr() == out.data_ptr(), name  # a view, not a copy
            tol = 1e-5 if dtype == torch.float32 else 2e-2
            assert (out.double() - out64).abs().max() <= tol, (name, dtype)


# -------------------------------------------------------------------------
# backward
# -------------------------------------------------------------------------

def _check_backward(cases, device="cpu"):
    for case in cases:
        q0, k0, v0, mask0, kw = _make(case)
        dtype = q0.dtype
        float_mask = mask0 is not None and mask0.dtype != torch.bool
        g = torch.randn(*q0.shape[:3], v0.shape[3]).to(dtype)

        leaves64 = [t.detach().double().requires_grad_(True) for t in (q0, k0, v0)]
        m64 = mask0.detach().double().requires_grad_(True) if float_mask else mask0
        out64, _ = _naive64(*leaves64, m64, kw["is_causal"], kw["bottom_right"])
        out64.backward(g.double())
        grads64 = [t.grad for t in leaves64] + ([m64.grad] if float_mask else [])

        leaves = [t.detach().clone().requires_grad_(True) for t in (q0, k0, v0)]
        mb = mask0.detach().to(dtype).requires_grad_(True) if float_mask else mask0
        _sdpa(*leaves, mb, kw["is_causal"], kw["bottom_right"], None).backward(g)
        grads_base = [t.grad for t in leaves] + ([mb.grad] if float_mask else [])

        on_device = [t.to(device) if t is not None else None for t in (q0, k0, v0, mask0)]
        for name in _runnable(*_op_args(*on_device, kw)):
            where = f"{name}, case {case}"
            ql, kl, vl = [t.detach().clone().to(device).requires_grad_(True) for t in (q0, k0, v0)]
            ml = mask0.detach().clone().to(device).requires_grad_(True) if float_mask else mask0
            out, _ = _on(name, _call, ql, kl, vl, ml, kw)
            out.backward(g.to(device))
            for label, ours, ref, base in zip(("dq", "dk", "dv", "dmask"),
                                              [ql.grad, kl.grad, vl.grad] + ([ml.grad] if float_mask else []),
                                              grads64, grads_base):
                _check(label, ours, ref, base, dtype, where)
            assert ql.grad.dtype == dtype and kl.grad.dtype == dtype and vl.grad.dtype == dtype, where
            if float_mask:
                assert ml.grad.dtype == mask0.dtype and ml.grad.shape == mask0.shape, where


@pytest.mark.triton
def test_backward_matches_fp64_small():
    _check_backward(SMALL_CASES)


@pytest.mark.slow
def test_backward_matches_fp64_large():
    _check_backward(_large_cases()[1::7])


@pytest.mark.triton
def test_gradient_through_lse():
    """lse is differentiable too: d lse_i / d s_ij = p_ij (used when merging partial attentions)."""
    q0, k0, v0 = torch.randn(1, 4, 9, 16), torch.randn(1, 2, 11, 16), torch.randn(1, 2, 11, 16)
    g_out, g_lse = torch.randn(1, 4, 9, 16), torch.randn(1, 4, 9)
    leaves64 = [t.double().requires_grad_(True) for t in (q0, k0, v0)]
    out64, lse64 = _naive64(*leaves64, None, True, True)
    ((out64 * g_out.double()).sum() + (lse64 * g_lse.double()).sum()).backward()
    for name in _runnable(q0, k0, v0, None, 0.0, True, None, True, True):
        leaves = [t.clone().requires_grad_(True) for t in (q0, k0, v0)]
        out, lse = _on(name, llmaccel.attention, *leaves, is_causal=True, enable_gqa=True,
                       causal_bottom_right=True, return_lse=True)
        ((out * g_out).sum() + (lse * g_lse).sum()).backward()
        for t, t64 in zip(leaves, leaves64):
            assert (t.grad.double() - t64.grad).abs().max() <= 1e-5, name


def test_chunked_loop_matches_unchunked(monkeypatch):
    """Queries cross several chunks (chunk = 7): forward and backward agree with the fp64 reference."""
    monkeypatch.setattr(attn_ref, "QUERY_CHUNK", 7)
    for case in [(2, 4, 2, 45, 30, 16, 16, "br", None, "blhd", torch.float32),
                 (1, 2, 2, 30, 45, 16, 16, None, "fullrow_float", "bhld", torch.float32),
                 (1, 2, 1, 23, 23, 16, 16, None, "bool_bcast", "bhld", torch.float32)]:
        with backends.use("torch"):
            _check_forward([case])
            _check_backward([case])


# -------------------------------------------------------------------------
# dropout (torch backend only: the kernels refuse dropout_p > 0)
# -------------------------------------------------------------------------

def test_dropout_is_replayed_in_backward():
    """With v = I the output is the dropped-out probability matrix itself; the same seed replays it, and the
    gradients equal those of float64 attention with exactly that keep mask."""
    B, Hq, Hkv, Lq, Lk, D, p = 1, 4, 2, 37, 29, 16, 0.25
    q0, k0 = torch.randn(B, Hq, Lq, D), torch.randn(B, Hkv, Lk, D)
    v0 = torch.randn(B, Hkv, Lk, D)
    mask = torch.rand(B, 1, Lq, Lk) > 0.2
    args = (q0, k0, torch.eye(Lk).expand(B, Hkv, Lk, Lk), mask, p, False, None, True, False)
    assert _runnable(*args) == ["torch"]
    for name in ("cpp", "triton"):
        with backends.use(name):
            assert backends.explain(OP, *args).backend is None
    with backends.use("torch"):
        _dropout_checks(q0, k0, v0, mask, B, Hq, Hkv, Lk, p)


def _dropout_checks(q0, k0, v0, mask, B, Hq, Hkv, Lk, p):
    Lq = q0.shape[2]
    torch.manual_seed(123)
    pd = llmaccel.attention(q0, k0, torch.eye(Lk).expand(B, Hkv, Lk, Lk), mask, p, enable_gqa=True)
    torch.manual_seed(123)
    pd_again = llmaccel.attention(q0, k0, torch.eye(Lk).expand(B, Hkv, Lk, Lk), mask, p, enable_gqa=True)
    assert torch.equal(pd, pd_again), "same seed, same dropout mask"
    keep = pd != 0
    allowed = mask.expand(B, Hq, Lq, Lk)
    frac = (~keep & allowed).sum() / allowed.sum()
    assert abs(frac.item() - p) < 0.05, f"dropped fraction {frac.item()} for p = {p}"
    torch.manual_seed(7)
    other = llmaccel.attention(q0, k0, torch.eye(Lk).expand(B, Hkv, Lk, Lk), mask, p, enable_gqa=True)
    assert not torch.equal(pd, other), "a different seed gives a different mask"

    leaves = [t.clone().requires_grad_(True) for t in (q0, k0, v0)]
    torch.manual_seed(123)
    out = llmaccel.attention(*leaves, mask, p, enable_gqa=True)
    g = torch.randn_like(out)
    out.backward(g)
    leaves64 = [t.double().requires_grad_(True) for t in (q0, k0, v0)]
    out64, _ = _naive64(*leaves64, mask, keep=keep.double(), p=p)
    out64.backward(g.double())
    assert (out.double() - out64).abs().max() <= 1e-5
    for label, t, t64 in zip(("dq", "dk", "dv"), leaves, leaves64):
        assert (t.grad.double() - t64.grad).abs().max() <= 1e-5, label


def test_backward_on_another_thread_matches_one_thread():
    """The dropout seed is an argument of the forward and backward ops (no thread-local state): a forward on one
    thread and its backward on another give exactly the single-thread gradients, dropout included."""
    import threading

    B, Hq, Hkv, Lq, Lk, D = 1, 4, 2, 19, 23, 16
    q0, k0, v0 = torch.randn(B, Hq, Lq, D), torch.randn(B, Hkv, Lk, D), torch.randn(B, Hkv, Lk, D)
    mask = torch.rand(Lq, Lk) > 0.2
    g = torch.randn(B, Hq, Lq, D)
    for p in (0.0, 0.3):
        names = ["torch"] if p > 0 else _runnable(q0, k0, v0, mask, p, False, None, True, False)
        for name in names:
            def forward():
                leaves = [t.clone().requires_grad_(True) for t in (q0, k0, v0)]
                torch.manual_seed(5)
                with backends.use(name):
                    return leaves, llmaccel.attention(*leaves, mask, p, enable_gqa=True)

            leaves1, out1 = forward()
            with backends.use(name):
                out1.backward(g)
            box = {}
            t = threading.Thread(target=lambda: box.update(r=forward()))
            t.start()
            t.join()
            leaves2, out2 = box["r"]
            with backends.use(name):
                out2.backward(g)  # this thread never ran the forward
            assert torch.equal(out1, out2), name
            for a, b in zip(leaves1, leaves2):
                assert torch.equal(a.grad, b.grad), (name, p)
            if p > 0:  # dropout really dropped something
                assert not torch.allclose(out1, llmaccel.attention(q0, k0, v0, mask, enable_gqa=True))


def test_backward_goes_through_the_dispatcher(monkeypatch):
    """explain("attention_backward", ...) names what runs; an explicit request applies to backward too, and a
    requested kernel that cannot run it (float mask gradient) hands it to torch, saying so."""
    bwd = importlib.import_module("llmaccel.ops.attention")._backward_op
    ran = []
    for name, impl in list(bwd.dispatch._impls.items()):
        monkeypatch.setattr(impl, "fn", lambda a, fn=impl.fn, name=name: ran.append(name) or fn(a))
    q0, k0, v0 = torch.randn(1, 2, 5, 8), torch.randn(1, 2, 7, 8), torch.randn(1, 2, 7, 8)
    for mask in (None, torch.zeros(5, 7, requires_grad=True)):
        for name in _runnable(q0, k0, v0, mask, 0.0, False, None, False, False):
            leaves = [t.clone().requires_grad_(True) for t in (q0, k0, v0)]
            with backends.use(name):
                out, lse = llmaccel.attention(*leaves, mask, return_lse=True)
                args = (*[t.detach() for t in leaves], mask, out.detach(), lse, torch.ones_like(out), None, 0.0,
                        False, None, False, None, mask is not None)
                ex = backends.explain("attention_backward", *args)
                ran.clear()
                out.sum().backward()
            expected = name if mask is None else "torch"
            assert ran == [expected] and ex.backend == expected, (name, ran, str(ex))
            if expected != name:
                assert "float mask" in ex.refused[name] and any("torch reference runs it" in n for n in ex.notes)


# -------------------------------------------------------------------------
# memory: O(L), never an Lq x Lk matrix
# -------------------------------------------------------------------------

class _LargestAllocation(TorchDispatchMode):
    """Records the largest storage produced by any aten op run under it."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in torch.utils._pytree.tree_leaves((args, kwargs))
                  if isinstance(t, torch.Tensor)}
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs:  # views: not new
                self.largest = max(self.largest, t.untyped_storage().nbytes())
        return out


@pytest.mark.slow
def test_reference_memory_is_linear_in_length():
    L, D = 4096, 64
    q, k, v = torch.randn(1, 1, L, D), torch.randn(1, 1, L, D), torch.randn(1, 1, L, D)
    mask = torch.rand(L, L) > 0.1  # the caller's mask is theirs; the op must not add another L x L
    full = L * L * 4
    for m, causal in ((None, True), (mask, False)):
        with _LargestAllocation() as spy:
            out, lse = llmaccel.attention_reference(q, k, v, m, 0.0, causal)
        assert spy.largest <= attn_ref.QUERY_CHUNK * L * 4, f"forward allocated {spy.largest} bytes at once"
        assert spy.largest < full // 8
        expected = F.scaled_dot_product_attention(q, k, v, attn_mask=m, is_causal=causal)
        assert (out - expected).abs().max() <= 1e-5
        if m is None:
            continue  # backward once (with the mask): it costs three times the forward
        g = torch.randn_like(out)
        with _LargestAllocation() as spy:
            attn_ref.reference_backward(q, k, v, m, out, lse, g, None, 0.0, causal, None, False, None,
                                        attn_ref.QUERY_CHUNK, False)
        assert spy.largest <= attn_ref.QUERY_CHUNK * L * 4, f"backward allocated {spy.largest} bytes at once"


# -------------------------------------------------------------------------
# torch.library integration
# -------------------------------------------------------------------------

@pytest.mark.triton
def test_opcheck():
    cases = [
        (torch.randn(1, 2, 5, 8), torch.randn(1, 2, 7, 8), torch.randn(1, 2, 7, 4), None, False, False),
        (torch.randn(2, 4, 6, 8), torch.randn(2, 2, 6, 8), torch.randn(2, 2, 6, 8), None, True, True),
        (torch.randn(1, 2, 5, 8), torch.randn(1, 1, 7, 8), torch.randn(1, 1, 7, 8), torch.rand(5, 7) > 0.3, False,
         False),
        (torch.randn(1, 2, 5, 8), torch.randn(1, 2, 7, 8), torch.randn(1, 2, 7, 8), torch.randn(1, 2, 1, 7), False,
         False),
    ]
    for i, (q, k, v, mask, causal, br) in enumerate(cases):
        args = (q, k, v, mask, 0.0, causal, None, k.shape[1] != q.shape[1], br)
        names = _runnable(*args)
        if INTERPRET and "triton" in names:
            names = ["triton"]  # the interpreter pass is for the Triton kernel; the default pass covers the rest
        for name in names:
            with backends.use(name):
                if i > 0:  # the first case without gradients, the others with (mask too when it is float)
                    args = tuple(t.clone().requires_grad_(True) if isinstance(t, torch.Tensor) and
                                 t.is_floating_point() else t for t in args)
                torch.library.opcheck(torch.ops.llmaccel.attention.default, args)


def test_backward_op_opcheck():
    """torch.ops.llmaccel.attention_backward is a well-formed custom op (schema, fake, no aliasing) on every
    backend that runs it here: bool mask (the fused kernels), float mask with its gradient, dropout (torch)."""
    q, k, v = torch.randn(1, 4, 5, 8), torch.randn(1, 2, 7, 8), torch.randn(1, 2, 7, 8)
    cases = [(torch.rand(5, 7) > 0.3, 0.0, None, False), (torch.randn(1, 1, 5, 7), 0.0, None, True),
             (None, 0.25, 1234, False)]
    for mask, p, seed, need_mask_grad in cases:
        out, lse = llmaccel.attention(q, k, v, mask, p, enable_gqa=True, return_lse=True, dropout_seed=seed)
        args = (q, k, v, mask, out, lse, torch.randn_like(out), torch.randn_like(lse), p, False, None, False, seed,
                need_mask_grad)
        for name in backends.BACKENDS:
            with backends.use(name):
                if backends.explain("attention_backward", *args).backend != name:
                    continue
                torch.library.opcheck(torch.ops.llmaccel.attention_backward.default, args)


@pytest.mark.skipif(INTERPRET, reason="compile pass is covered by the default run")
def test_torch_compile_fullgraph():
    def fn(q, k, v, mask):
        a = llmaccel.attention(q, k, v, mask)
        b, lse = llmaccel.attention(q, k, v, is_causal=True, causal_bottom_right=True, return_lse=True)
        return a + b * 2, lse

    compiled = torch.compile(fn, fullgraph=True, dynamic=False)
    q0, k0, v0 = torch.randn(2, 2, 9, 16), torch.randn(2, 2, 13, 16), torch.randn(2, 2, 13, 16)
    mask = torch.rand(9, 13) > 0.3
    g = torch.randn(2, 2, 9, 16)
    results = []
    for f in (fn, compiled):
        leaves = [t.clone().requires_grad_(True) for t in (q0, k0, v0)]
        out, lse = f(*leaves, mask)
        out.backward(g)
        results.append((out.detach(), lse, *[t.grad for t in leaves]))
    for a, b in zip(*results):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)


# -------------------------------------------------------------------------
# bad inputs
# -------------------------------------------------------------------------

def test_bad_inputs_raise_clear_errors():
    q, k, v = torch.randn(1, 4, 5, 8), torch.randn(1, 2, 7, 8), torch.randn(1, 2, 7, 6)
    cases = [
        (dict(query=torch.randn(4, 5, 8)), ValueError, r"attention: query must be 4-D"),
        (dict(key="k"), TypeError, r"attention: key must be a torch.Tensor"),
        (dict(query=torch.ones(1, 4, 5, 8, dtype=torch.int32)), TypeError, r"attention: query must be float32"),
        (dict(value=v.double()), TypeError, r"attention: value must be float32, float16 or bfloat16"),
        (dict(key=k.half()), TypeError, r"attention: query, key and value must have one dtype"),
        (dict(key=torch.randn(1, 2, 7, 4)), ValueError, r"attention: query and key must have the same head dim"),
        (dict(key=torch.randn(2, 2, 7, 8)), ValueError, r"attention: query and key must have the same batch"),
        (dict(value=torch.randn(1, 2, 6, 6)), ValueError, r"attention: key and value must agree in \[B, Hkv, Lk\]"),
        (dict(enable_gqa=False), ValueError, r"attention: query has 4 heads and key/value have 2: pass enable_gqa"),
        (dict(key=torch.randn(1, 3, 7, 8), value=torch.randn(1, 3, 7, 6)), ValueError,
         r"attention: enable_gqa=True needs the query heads \(4\) to be a multiple of the key/value heads \(3\)"),
        (dict(attn_mask=torch.ones(5, 7, dtype=torch.int64)), TypeError, r"attention: attn_mask must be bool"),
        (dict(attn_mask=torch.ones(5, 6, dtype=torch.bool)), ValueError,
         r"attention: attn_mask of shape \(5, 6\) does not broadcast to \[B, Hq, Lq, Lk\] = \[1, 4, 5, 7\]"),
        (dict(attn_mask=torch.ones(1, 1, 1, 5, 7, dtype=torch.bool)), ValueError, r"attention: attn_mask of shape"),
        (dict(attn_mask=torch.ones(5, 7, dtype=torch.bool), is_causal=True), ValueError,
         r"attention: is_causal=True and attn_mask cannot be combined"),
        (dict(dropout_p=1.0), ValueError, r"attention: dropout_p must be a float in \[0, 1\)"),
        (dict(dropout_p=-0.1), ValueError, r"attention: dropout_p must be a float in \[0, 1\)"),
        (dict(causal_bottom_right=True), ValueError, r"attention: causal_bottom_right=True .* needs is_causal=True"),
        (dict(key=torch.empty(1, 2, 7, 8, device="meta")), ValueError, r"attention: all tensors must be on one dev"),
        (dict(attn_mask=torch.ones(5, 7, dtype=torch.bool, device="meta")), ValueError,
         r"attention: all tensors must be on one device"),
    ]
    for change, exc, pattern in cases:
        a = dict(query=q, key=k, value=v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                 enable_gqa=True, causal_bottom_right=False)
        a.update(change)
        with pytest.raises(exc, match=pattern):
            llmaccel.attention(a["query"], a["key"], a["value"], a["attn_mask"], a["dropout_p"], a["is_causal"],
                               a["scale"], a["enable_gqa"], causal_bottom_right=a["causal_bottom_right"])
        if all(isinstance(a[n], torch.Tensor) for n in ("query", "key", "value")):
            with pytest.raises(Exception, match=pattern):  # the raw op validates too
                torch.ops.llmaccel.attention(*a.values())
            with pytest.raises(exc, match=pattern):        # and so does the reference
                llmaccel.attention_reference(*a.values())
    with pytest.raises(TypeError, match=r"attention: scale must be a float or None"):
        llmaccel.attention(q, k, v, scale="0.1", enable_gqa=True)


def test_explain_names_the_dropout_limit():
    q, k, v = torch.randn(1, 2, 5, 8), torch.randn(1, 2, 7, 8), torch.randn(1, 2, 7, 8)
    ex = backends.explain(OP, q, k, v, None, 0.1, False, None, False, False)
    assert ex.backend == "torch", str(ex)
    if backends.available_backends("cpu").count("cpp") and hasattr(llmaccel._ext.ext(), "attention_fwd"):
        assert "dropout" in ex.refused["cpp"], str(ex)
    with backends.use("cpp"), pytest.raises(backends.BackendUnavailable, match="attention"):
        llmaccel.attention(q, k, v, dropout_p=0.1)


# -------------------------------------------------------------------------
# CUDA
# -------------------------------------------------------------------------

@pytest.mark.cuda
@pytest.mark.skipif(INTERPRET, reason="compiled GPU kernels only")
def test_cuda_attention_matches_fp64():
    _check_forward(SMALL_CASES, device="cuda")
    _check_backward(SMALL_CASES, device="cuda")
