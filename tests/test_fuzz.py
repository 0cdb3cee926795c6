"""Property-based tests: every public op and module on random shapes, strides, dtypes, masks and values.

Each call must either match the float64 / int64 reference within the op's
documented bound or raise a clear Python exception naming the op and the
argument.  Shapes include 0-size dims, 1, primes and a few large ones;
layouts include transposed, sliced, expanded (stride 0), offset and
overlapping views; values include extremes, NaN/Inf and all-zero rows.

Budget: ``LLMACCEL_FUZZ_EXAMPLES`` examples per test (default 25, what CI
runs, with a fixed seed so CI is reproducible); set
``LLMACCEL_FUZZ_RANDOM=1`` for fresh random draws, e.g.

    LLMACCEL_FUZZ_EXAMPLES=2000 LLMACCEL_FUZZ_RANDOM=1 python -m pytest tests/test_fuzz.py -q
"""

import importlib
import math
import os

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import llmaccel  # noqa: E402
from llmaccel._ext import ext  # noqa: E402

import cpp_calls  # noqa: E402

INT8_LINEAR_OPS = importlib.import_module("llmaccel.ops.int8_linear")

EXAMPLES = int(os.environ.get("LLMACCEL_FUZZ_EXAMPLES", "25"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=os.environ.get("LLMACCEL_FUZZ_RANDOM") != "1",
                suppress_health_check=list(HealthCheck), print_blob=True)

MM_VARIANTS = llmaccel.cpu_info()["available_variants"].get("int8_mm", [])
ATTN_VARIANTS = llmaccel.cpu_info()["available_variants"].get("attention", [])
BACKENDS = ("cpp", "torch")

# Sizes: 0, 1, small primes, powers of two +- 1, and a few larger ones.
SMALL = st.sampled_from([0, 1, 2, 3, 5, 7, 8, 13, 16, 17, 31, 33, 64, 65, 113, 127, 128, 129])
DIM = st.one_of(SMALL, st.integers(0, 300))
LAYOUTS = ("contiguous", "transposed", "sliced", "offset", "expanded", "overlapping")


def view_of(values: torch.Tensor, layout: str) -> torch.Tensor:
    """A 2-D view holding ``values`` (or, for 'expanded'/'overlapping', a view of the same shape whose
    rows repeat: the reference is computed from the returned view, so any layout is fair)."""
    R, C = values.shape
    if layout == "contiguous" or R == 0 or C == 0:
        return values.clone()
    if layout == "transposed":
        return values.t().contiguous().t()
    if layout == "sliced":  # every other column of a wider buffer
        buf = torch.zeros(R, 2 * C, dtype=values.dtype)
        buf[:, ::2] = values
        return buf[:, ::2]
    if layout == "offset":  # an interior window of a larger buffer
        buf = torch.zeros(R + 3, C + 5, dtype=values.dtype)
        buf[2:2 + R, 3:3 + C] = values
        return buf[2:2 + R, 3:3 + C]
    if layout == "expanded":  # every row the same memory (stride 0)
        return values[:1].expand(R, C)
    if layout == "overlapping":  # rows overlap by all but one element
        flat = values.reshape(-1)[: R + C - 1].clone() if R * C >= R + C - 1 else values.reshape(-1).clone()
        flat = torch.cat([flat, flat.new_zeros(max(0, R + C - 1 - flat.numel()))])
        return flat.as_strided((R, C), (1, 1))
    raise AssertionError(layout)


@st.composite
def int8_values(draw, shape):
    kind = draw(st.sampled_from(["uniform", "extreme", "minus128", "small"]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2 ** 31)))
    if kind == "uniform":
        t = torch.randint(-128, 128, shape, dtype=torch.int8, generator=g)
    elif kind == "extreme":
        t = torch.where(torch.rand(shape, generator=g) < 0.5, -128, 127).to(torch.int8)
    elif kind == "minus128":
        t = torch.full(shape, -128, dtype=torch.int8)
    else:
        t = torch.randint(-3, 4, shape, dtype=torch.int8, generator=g)
    return t


def _no_error_or_named(fn, op: str):
    """Run fn; an exception is fine only if it is a clear one naming the op."""
    try:
        return fn(), None
    except (ValueError, TypeError, OverflowError, RuntimeError, NotImplementedError) as e:
        assert op in str(e), f"{type(e).__name__} does not name {op!r}: {e}"
        return None, e


# ---------------------------------------------------------------------------- int8_mm

@FUZZ
@given(M=DIM, K=DIM, N=DIM, la=st.sampled_from(LAYOUTS), lb=st.sampled_from(LAYOUTS), data=st.data())
def test_int8_mm_fuzz(M, K, N, la, lb, data):
    from llmaccel.ops.int8_mm import int8_mm_cpp

    a = view_of(data.draw(int8_values((M, K))), la)
    b = view_of(data.draw(int8_values((K, N))), lb)
    ref = (a.long() @ b.long()).to(torch.int32)
    for backend in BACKENDS:
        with llmaccel.backends.use(backend):
            out = llmaccel.int8_mm(a, b)
        assert out.dtype == torch.int32 and out.shape == (M, N)
        assert torch.equal(out, ref), f"int8_mm {backend} {la}/{lb} wrong"
    for variant in MM_VARIANTS:
        assert torch.equal(int8_mm_cpp(a, b, variant), ref), f"int8_mm cpp:{variant} {la}/{lb} wrong"


# ---------------------------------------------------------------------------- quantize_per_token

@st.composite
def float_rows(draw, shape, dtype):
    """Rows of very different magnitudes, with optional all-zero rows and NaN/Inf entries."""
    g = torch.Generator().manual_seed(draw(st.integers(0, 2 ** 31)))
    R, C = shape
    mag = torch.tensor([draw(st.sampled_from([1e-30, 1e-6, 1e-3, 1.0, 3.0, 1e3, 1e30])) for _ in range(R)] or [1.0])
    x = torch.randn(R, C, generator=g, dtype=torch.float64) * mag[:R, None]
    if dtype != torch.float32:
        x = x.clamp(-6e4, 6e4) if dtype == torch.float16 else x.clamp(-1e38, 1e38)
    x = x.to(dtype)
    if R and C:
        if draw(st.booleans()):
            x[draw(st.integers(0, R - 1))] = 0  # an all-zero row
        special = draw(st.sampled_from([None, None, "nan", "inf", "-inf"]))
        if special:
            x[draw(st.integers(0, R - 1)), draw(st.integers(0, C - 1))] = float(special)
    return x


FLOAT_DTYPES = st.sampled_from([torch.float32, torch.float16, torch.bfloat16])


def _nonfinite_rows(x):
    return ~torch.isfinite(x.float()).all(dim=-1) if x.shape[-1] else torch.zeros(x.shape[:-1], dtype=torch.bool)


@FUZZ
@given(R=DIM, K=DIM, dtype=FLOAT_DTYPES, layout=st.sampled_from(LAYOUTS), data=st.data())
def test_quantize_per_token_fuzz(R, K, dtype, layout, data):
    x = view_of(data.draw(float_rows((R, K), dtype)), layout)
    xd = x.double()
    bad = _nonfinite_rows(x)
    for backend in BACKENDS:
        with llmaccel.backends.use(backend):
            q, scale = llmaccel.quantize_per_token(x)
        assert q.dtype == torch.int8 and q.shape == (R, K) and scale.shape == (R,)
        # Documented numerics: a row holding NaN or +-Inf gets scale NaN and q = 0, so whatever
        # is computed from it is NaN; an all-zero row gets scale 1 and q = 0.
        assert scale[bad].isnan().all() and (q[bad] == 0).all(), f"{backend}: non-finite row not NaN"
        good = ~bad
        if not good.any():
            continue
        absmax = xd[good].abs().amax(dim=1) if K else torch.zeros(int(good.sum()), dtype=torch.float64)
        exp_scale = torch.where(absmax > 0, (absmax.float() / 127), torch.ones_like(absmax.float()))
        exp_scale = torch.where(exp_scale > 0, exp_scale, torch.ones_like(exp_scale))
        assert torch.equal(scale[good], exp_scale), f"{backend}: scale differs"
        assert torch.isfinite(scale).logical_or(bad).all()
        exact = xd[good] / scale[good].double()[:, None]
        assert (q[good].double().abs() <= 127).all()
        # q is round-half-even(x / scale) up to one step where x / scale sits within
        # 2^-16 of a rounding tie (x * (127 / absmax) vs the exact quotient).
        err = (q[good].double() - exact.clamp(-127, 127)).abs()
        assert (err <= 0.5 + 2 ** -16).all(), f"{backend}: q off by {err.max().item()}"


# ---------------------------------------------------------------------------- int8_linear

@FUZZ
@given(lead=st.lists(st.sampled_from([0, 1, 2, 3, 7]), min_size=0, max_size=2), K=DIM, N=DIM,
       act=st.sampled_from(["dynamic", "weight_only", "auto"]), dtype=FLOAT_DTYPES, with_bias=st.booleans(),
       wl=st.sampled_from(["contiguous", "transposed", "sliced"]), data=st.data())
def test_int8_linear_fuzz(lead, K, N, act, dtype, with_bias, wl, data):
    x2 = data.draw(float_rows((math.prod(lead) if lead else 1, K), dtype))
    x = x2.reshape(*lead, K) if lead else x2[0]
    M = math.prod(lead) if lead else 1
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2 ** 31)))
    w = view_of(torch.randint(-127, 128, (N, K), dtype=torch.int8, generator=g), wl)
    s = (torch.rand(N, generator=g) * 0.02 + 1e-4).float()
    bias = torch.randn(N, generator=g).to(dtype) if with_bias else None
    xf = x.reshape(M, K).double()
    Wd = w.double() * s.double()[:, None]
    ref = xf @ Wd.t() + (bias.double() if bias is not None else 0)
    bad = _nonfinite_rows(x.reshape(M, K))
    for backend in BACKENDS:
        with llmaccel.backends.use(backend):
            y = llmaccel.int8_linear(x, w, s, bias, act=act)
        assert y.dtype == dtype and y.shape == (*x.shape[:-1], N)
        y2 = y.reshape(M, N).double()
        mode = act if act != "auto" else INT8_LINEAR_OPS.choose_mode(x, w)[0]
        if mode == "dynamic":
            # A non-finite activation makes the whole output row NaN (its scale is NaN).
            assert y2[bad].isnan().all(), f"{backend}: NaN/Inf input row not NaN"
            # Quantizing x costs at most half a step (scale_x / 2) per element, plus one step at
            # a rounding tie: |err| <= scale_x * sum_k |W[n, k]|; then the output dtype's rounding.
            sx = xf.abs().amax(1, keepdim=True) / 127 if K else torch.zeros(M, 1, dtype=torch.float64)
            bound = sx * Wd.abs().sum(1)[None, :]
        else:
            # fp32 accumulation of K products.
            bound = 1e-6 * (K ** 0.5 + 1) * (xf.abs() @ Wd.abs().t())
            fin = torch.isfinite(ref)
            in_range = ref.abs() < torch.finfo(dtype).max  # beyond it the output dtype overflows by design
            assert (torch.isfinite(y2) == fin)[in_range].all() or bad.any(), f"{backend}: finiteness differs"
        eps = {torch.float32: 2 ** -23, torch.float16: 2 ** -10, torch.bfloat16: 2 ** -7}[dtype]
        tiny = float(torch.finfo(dtype).smallest_normal) * eps  # the output dtype's subnormal spacing
        fin_ref = ref[torch.isfinite(ref)]
        bound = bound + eps * ref.abs() + 1e-6 * (fin_ref.abs().amax() if fin_ref.numel() else 0) + tiny
        ok = ~bad[:, None].expand_as(ref) if ref.numel() else torch.zeros_like(ref, dtype=torch.bool)
        ok &= ref.abs() < torch.finfo(dtype).max  # beyond the output dtype's range: inf by design
        diff = (y2 - ref).abs()
        assert (diff[ok] <= bound[ok]).all(), f"int8_linear {backend} {mode}: max excess {(diff - bound)[ok].max()}"


# ---------------------------------------------------------------------------- attention

def _attention_ref(q, k, v, mask, causal, bottom_right, scale):
    """float64; fully masked rows -> 0."""
    Hq, Hkv = q.shape[1], k.shape[1]
    qd, kd, vd = q.double(), k.double().repeat_interleave(Hq // Hkv, 1), v.double().repeat_interleave(Hq // Hkv, 1)
    s = qd @ kd.transpose(-1, -2) * scale
    Lq, Lk = q.shape[2], k.shape[2]
    allowed = torch.ones(Lq, Lk, dtype=torch.bool)
    if causal:
        off = Lk - Lq if bottom_right else 0
        allowed = torch.arange(Lk)[None, :] <= torch.arange(Lq)[:, None] + off
    if mask is not None and mask.dtype == torch.bool:
        allowed = allowed & mask
    elif mask is not None:
        s = s + mask.double()
    s = s.masked_fill(~allowed, float("-inf"))
    if Lk == 0:
        return torch.zeros(*q.shape[:3], v.shape[-1], dtype=torch.float64)
    m = s.amax(-1, keepdim=True)
    p = torch.exp(s - torch.where(torch.isfinite(m), m, torch.zeros_like(m)))
    l = p.sum(-1, keepdim=True)
    out = (p @ vd) / torch.where(l > 0, l, torch.ones_like(l))
    return out


def _bhld(t_bhld: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "blhd":  # [B, L, H, D] memory (what a projection + view gives)
        return t_bhld.transpose(1, 2).contiguous().transpose(1, 2)
    if layout == "sliced":  # head dim every other element
        B, H, L, D = t_bhld.shape
        buf = torch.zeros(B, H, L, 2 * D)
        buf[..., ::2] = t_bhld
        return buf[..., ::2]
    return t_bhld.clone()


@FUZZ
@given(B=st.sampled_from([1, 2]), Hkv=st.sampled_from([1, 2]), G=st.sampled_from([1, 2, 3]),
       Lq=st.one_of(st.sampled_from([1, 2, 3, 17, 64, 65]), st.integers(0, 150)),
       Lk=st.one_of(st.sampled_from([1, 2, 3, 17, 64, 65]), st.integers(0, 600)),
       D=st.sampled_from([1, 3, 8, 16, 17, 64, 80]), Dv=st.sampled_from([None, 1, 5, 32]),
       causal=st.booleans(), bottom_right=st.booleans(),  # bottom_right is only meaningful (and allowed) with causal
       mask_kind=st.sampled_from([None, "bool-row", "bool-full", "float"]),
       layout=st.sampled_from(["contiguous", "blhd", "sliced"]), sharp=st.sampled_from([1.0, 30.0]),
       scale=st.sampled_from([None, 0.05]), data=st.data())
def test_attention_fuzz(B, Hkv, G, Lq, Lk, D, Dv, causal, bottom_right, mask_kind, layout, sharp, scale, data):
    Hq = Hkv * G
    Dv = Dv or D
    bottom_right = bottom_right and causal
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2 ** 31)))
    q = _bhld(torch.randn(B, Hq, Lq, D, generator=gen) * sharp, layout)
    k = _bhld(torch.randn(B, Hkv, Lk, D, generator=gen), layout)
    v = _bhld(torch.randn(B, Hkv, Lk, Dv, generator=gen), layout)
    mask = None
    if mask_kind == "bool-row":  # key padding, broadcast over heads and queries
        mask = torch.rand(B, 1, 1, Lk, generator=gen) > 0.3
    elif mask_kind == "bool-full":
        mask = torch.rand(B, Hq, Lq, Lk, generator=gen) > 0.5
    elif mask_kind == "float":
        mask = torch.randn(Lq, Lk, generator=gen)
    sc = scale if scale is not None else 1.0 / math.sqrt(D)
    ref = _attention_ref(q, k, v, mask, causal, bottom_right, sc)
    for backend in BACKENDS:
        with llmaccel.backends.use(backend):
            out, e = _no_error_or_named(lambda: llmaccel.attention(
                q, k, v, attn_mask=mask, is_causal=causal, scale=scale, enable_gqa=G > 1,
                causal_bottom_right=bottom_right), "attention")
        if e is not None:
            # The one documented refusal: is_causal together with an explicit mask (as SDPA).
            assert causal and mask is not None, f"{backend}: unexpected refusal: {e}"
            continue
        assert out.shape == (B, Hq, Lq, Dv)
        assert torch.isfinite(out).all(), f"{backend}: non-finite output"
        # fp32 flash attention: the error scales with |v| and the sharpness of the softmax.
        tol = 2e-5 * (1 + sharp) * max(1.0, float(v.abs().amax()) if v.numel() else 1.0)
        assert (out.double() - ref).abs().max() <= tol if out.numel() else True, f"attention {backend} wrong"


# ---------------------------------------------------------------------------- modules

@FUZZ
@given(lead=st.lists(st.sampled_from([1, 2, 5]), min_size=1, max_size=2), K=st.integers(1, 200),
       N=st.integers(1, 200), act=st.sampled_from(["dynamic", "weight_only"]), bias=st.booleans(),
       seed=st.integers(0, 2 ** 31))
def test_int8linear_module_fuzz(lead, K, N, act, bias, seed):
    torch.manual_seed(seed)
    lin = torch.nn.Linear(K, N, bias=bias)
    mod = llmaccel.nn.Int8Linear.from_linear(lin, act=act)
    x = torch.randn(*lead, K)
    with torch.no_grad():
        y = mod(x).double()
        ref = lin.double()(x.double())
    # Per-channel weight rounding (half a step of w_scale per weight) plus, for W8A8, the activation's.
    w_step = lin.weight.double().abs().amax(1) / 127
    xabs = x.double().abs()
    bound = 0.5 * xabs @ torch.ones(K, N, dtype=torch.float64) * w_step[None, :]
    if act == "dynamic":
        bound = bound + (xabs.amax(-1, keepdim=True) / 127) * lin.weight.double().abs().sum(1)
    assert ((y - ref).abs() <= bound * 1.01 + 1e-5).all()


@FUZZ
@given(E=st.sampled_from([8, 16, 24]), H=st.sampled_from([1, 2, 4]), L=st.integers(1, 40), S=st.integers(1, 40),
       batch_first=st.booleans(), kpm=st.booleans(), causal=st.booleans(), seed=st.integers(0, 2 ** 31))
def test_multihead_attention_module_fuzz(E, H, L, S, batch_first, kpm, causal, seed):
    if E % H:
        return
    torch.manual_seed(seed)
    ref_mha = torch.nn.MultiheadAttention(E, H, batch_first=batch_first).eval()
    ours = llmaccel.nn.MultiheadAttention.from_torch(ref_mha).eval()
    shape_q = (2, L, E) if batch_first else (L, 2, E)
    shape_k = (2, S, E) if batch_first else (S, 2, E)
    q, k = torch.randn(shape_q), torch.randn(shape_k)
    key_padding_mask = None
    if kpm:
        key_padding_mask = torch.rand(2, S) < 0.3
        key_padding_mask[:, 0] = False  # keep one key per batch (torch gives NaN rows otherwise)
    attn_mask = torch.triu(torch.ones(L, S, dtype=torch.bool), 1) if causal else None
    if attn_mask is not None:
        attn_mask[:, 0] = False
    with torch.no_grad():
        y_ref = ref_mha.double()(q.double(), k.double(), k.double(), key_padding_mask=key_padding_mask,
                                 attn_mask=attn_mask, need_weights=False)[0]
        y = ours(q, k, k, key_padding_mask=key_padding_mask, attn_mask=attn_mask, need_weights=False)[0]
    assert (y.double() - y_ref).abs().max() <= 1e-4


# ---------------------------------------------------------------------------- bad input

@FUZZ
@given(which=st.sampled_from(["int8_mm", "int8_linear", "quantize_per_token", "attention"]),
       mutation=st.integers(0, 5), data=st.data())
def test_bad_input_raises_naming_op(which, mutation, data):
    """A valid call with one argument broken must raise a Python exception that names the op."""
    a = torch.randint(-128, 128, (5, 7), dtype=torch.int8)
    b = torch.randint(-128, 128, (7, 3), dtype=torch.int8)
    x = torch.randn(4, 7)
    w = torch.randint(-127, 128, (3, 7), dtype=torch.int8)
    s = torch.rand(3) + 0.01
    q = torch.randn(1, 4, 5, 8)
    kv = torch.randn(1, 2, 6, 8)
    broken = {
        "int8_mm": [lambda: llmaccel.int8_mm(a, b[:6]), lambda: llmaccel.int8_mm(a.float(), b),
                    lambda: llmaccel.int8_mm(a[None], b), lambda: llmaccel.int8_mm(a, b.int()),
                    lambda: llmaccel.int8_mm(a, "b"), lambda: llmaccel.int8_mm(a.to("meta"), b)],
        "int8_linear": [lambda: llmaccel.int8_linear(x, w, s[:2]), lambda: llmaccel.int8_linear(x[:, :6], w, s),
                        lambda: llmaccel.int8_linear(x.int(), w, s), lambda: llmaccel.int8_linear(x, w.float(), s),
                        lambda: llmaccel.int8_linear(x, w, s, act="int4"),
                        lambda: llmaccel.int8_linear(x, w, s, torch.randn(4))],
        "quantize_per_token": [lambda: llmaccel.quantize_per_token(x.int()),
                               lambda: llmaccel.quantize_per_token(torch.tensor(1.0)),
                               lambda: llmaccel.quantize_per_token(x.double()),
                               lambda: llmaccel.quantize_per_token(None),
                               lambda: llmaccel.quantize_per_token(x.to(torch.int8)),
                               lambda: llmaccel.quantize_per_token(x.to("meta").int())],
        "attention": [lambda: llmaccel.attention(q, kv, kv),  # GQA without enable_gqa
                      lambda: llmaccel.attention(q, kv[..., :7], kv, enable_gqa=True),
                      lambda: llmaccel.attention(q[0], kv, kv, enable_gqa=True),
                      lambda: llmaccel.attention(q, kv, kv[:, :, :5], enable_gqa=True),
                      lambda: llmaccel.attention(q, kv, kv, attn_mask=torch.ones(3, 3, dtype=torch.bool),
                                                 enable_gqa=True),
                      lambda: llmaccel.attention(q.int(), kv, kv, enable_gqa=True)],
    }[which]
    fn = broken[mutation % len(broken)]
    with pytest.raises((ValueError, TypeError, RuntimeError)) as info:
        fn()
    assert which in str(info.value), f"error does not name {which!r}: {info.value}"


# ---------------------------------------------------------------------------- the C++ entry points

@FUZZ
@given(field=st.sampled_from(["a.sizes", "b.sizes", "c.sizes", "a.strides", "b.strides", "c.strides", "a.addr",
                              "b.addr", "c.addr", "a.dtype", "c.dtype", "nthreads"]),
       dim=st.integers(0, 1), bad=st.sampled_from([-1, -(2 ** 40), 2 ** 62]), nthreads=st.sampled_from([0, -3]))
def test_cpp_int8_mm_rejects_inconsistent_arguments(field, dim, bad, nthreads):
    """llmaccel._C.int8_mm driven directly (each tensor a view, csrc/tensor_view.h): a negative, overflowing or
    inconsistent size, a negative or overflowing stride, a null pointer, a wrong dtype or a bad thread count
    raises ValueError / OverflowError naming the op; nothing is read or written."""
    M, N, K = 3, 4, 5
    a = torch.randint(-128, 128, (M, K), dtype=torch.int8)
    b = torch.randint(-128, 128, (K, N), dtype=torch.int8)
    c = torch.zeros(M, N, dtype=torch.int32)
    over = {}
    if field == "nthreads":
        over = {"nthreads": nthreads}
    elif field.endswith(".addr"):
        over = {field: 0}  # null (a wild address can't be checked)
    elif field.endswith(".dtype"):
        over = {field: "float32"}
    else:
        t = {"a": a, "b": b, "c": c}[field[0]]
        values = list(t.shape if field.endswith("sizes") else t.stride())
        values[dim] = bad
        over = {field: tuple(values)}
    with pytest.raises((ValueError, OverflowError, MemoryError)) as info:
        cpp_calls.call_views("int8_mm", dict(a=a, b=b, c=c), dict(nthreads=1, variant=""), **over)
    if not isinstance(info.value, MemoryError):  # a huge size may legitimately fail to allocate scratch
        assert "llmaccel::int8_mm" in str(info.value)
    assert (c == 0).all()


@FUZZ
@given(field=st.sampled_from(["q.sizes", "k.sizes", "v.sizes", "out.sizes", "q.strides", "k.strides", "v.strides",
                              "out.strides", "mask.dtype", "Hq%Hkv", "nthreads"]),
       dim=st.integers(1, 3), bad=st.sampled_from([-1, -(2 ** 40), 2 ** 62]))
def test_cpp_attention_rejects_inconsistent_arguments(field, dim, bad):
    """Every tensor reaches attention_fwd as a view (csrc/tensor_view.h); one size or stride of one view made
    negative, huge or inconsistent with the others must raise a ValueError / OverflowError naming the op,
    and write nothing.  (Dims 1-3: the batch is 1, so a batch stride is never used and any value is valid.)"""
    over = {}
    if field == "Hq%Hkv":
        over = {"k.sizes": [1, 3, 5, 8], "v.sizes": [1, 3, 5, 8]}
    elif field == "mask.dtype":
        over = {"mask.dtype": "int32"}
    elif field == "nthreads":
        over = {"nthreads": 0}
    else:
        base, _, _ = cpp_calls.attention_fwd_kwargs()
        name, part = field.split(".")
        values = list(base[name][2 if part == "sizes" else 3])
        values[dim] = bad
        over = {field: values}
    kw, _keep, out = cpp_calls.attention_fwd_kwargs(**over)
    with pytest.raises((ValueError, OverflowError), match="llmaccel::attention"):
        ext().attention_fwd(**kw)
    assert (out == 0).all()


def test_cpp_rejects_views_beyond_any_buffer():
    """Regression (found by the random fuzz run): a stride whose element offsets fit int64 but whose byte
    offsets do not (v's head stride = 2^62 floats) was accepted; now any view reaching 2^48 elements raises."""
    kw, _keep, out = cpp_calls.attention_fwd_kwargs(**{"v.strides": [80, 2 ** 62, 8, 1]})
    with pytest.raises(OverflowError, match="llmaccel::attention: v: .*beyond any addressable buffer"):
        ext().attention_fwd(**kw)
    a = torch.zeros(2, 3, dtype=torch.int8)
    c = torch.zeros(2, 2, dtype=torch.int32)
    with pytest.raises(OverflowError, match="llmaccel::int8_mm: a: .*beyond any addressable buffer"):
        cpp_calls.call_views("int8_mm", dict(a=a[:, :2], b=a.t()[:2], c=c), dict(nthreads=1),
                             **{"a.strides": (2 ** 50, 1)})
    assert (out == 0).all() and (c == 0).all()
