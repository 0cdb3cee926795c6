"""Special values: NaN and Inf propagate as in the PyTorch peer; zeros stay zeros; int8 never overflows silently.

Documented per op:
* ``attention``: NaN / Inf in q, or in k / v at an attended key, give NaN / Inf
  exactly where ``F.scaled_dot_product_attention`` (math path, fp32) gives
  them; a fully masked row gives 0 (SDPA gives NaN there: our documented
  difference); a non-finite value at a key a row does not attend is
  unspecified for that row (SDPA: NaN via 0 * NaN).
* ``int8_linear(act="weight_only")``: the fp32 product, so NaN / Inf where ``F.linear`` has them.
* ``int8_linear(act="dynamic")`` and ``quantize_per_token``: a row holding
  NaN / Inf has scale NaN, so its whole output row is NaN (``F.linear`` has
  NaN or +-Inf in that row); never a plausible finite number.
* all-zero activation rows and all-zero weight channels: scale 1, q 0, output = bias (no NaN).
* ``int8_mm``: exact, and K > 131071 (where an int32 sum could overflow) raises.
"""

import zlib

import pytest
import torch
import torch.nn.functional as F

import llmaccel

BACKENDS = ("cpp", "torch")


def _poison(t, gen, value, count=2):
    """t with `count` random entries set to value; also returns the poisoned (row) indices along dim 2."""
    t = t.clone()
    idx = torch.randint(0, t.numel(), (count,), generator=gen)
    t.view(-1)[idx] = value
    L, D = t.shape[-2], t.shape[-1]
    return t, [((i // (L * D)) % t.shape[1], (i // D) % L) for i in idx.tolist()]  # (head, row) of each


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("where", ["q", "k", "v"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("Lq,Lk,causal", [(5, 7, False), (1, 300, False), (70, 70, True)])
def test_attention_special_values_match_sdpa(backend, where, value, Lq, Lk, causal):
    """NaN / Inf in q, or in k / v at a key a row attends, give NaN / Inf exactly where SDPA's math
    path does.  A non-finite score or value at a key a row does *not* attend (causal future) is left
    out of the comparison: SDPA computes +-inf + (-inf) and 0 * v there and spreads NaN to the row;
    our kernels skip those keys (up to the rows sharing a register tile with the diagonal), so that
    case is documented as unspecified."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    gen = torch.Generator().manual_seed(zlib.crc32(f"{where}{value}{Lq}".encode()))
    t = {"q": torch.randn(1, 2, Lq, 16, generator=gen), "k": torch.randn(1, 2, Lk, 16, generator=gen),
         "v": torch.randn(1, 2, Lk, 16, generator=gen)}
    t[where], rows = _poison(t[where], gen, value)
    with sdpa_kernel(SDPBackend.MATH):
        ref = F.scaled_dot_product_attention(t["q"], t["k"], t["v"], is_causal=causal)
    with llmaccel.backends.use(backend):
        out = llmaccel.attention(t["q"], t["k"], t["v"], is_causal=causal)
    keep = torch.ones(2, Lq, dtype=torch.bool)
    if causal and where in ("k", "v"):
        # per head: rows that attend every poisoned key (a row that attends one and not another
        # mixes the attended case with the unspecified one)
        for h, r in rows:
            keep[h, :r] = False
    elif causal:
        # a poisoned query row has non-finite scores at the future keys it does not attend:
        # unspecified for that row (unless it attends every key); every other row must be unaffected
        for h, r in rows:
            keep[h, r] = r == Lq - 1
    out, ref = out[:, keep], ref[:, keep]
    assert torch.equal(out.isnan(), ref.isnan()), "NaN pattern differs from SDPA (math)"
    assert torch.equal(out.isinf(), ref.isinf()), "Inf pattern differs from SDPA (math)"
    fin = torch.isfinite(ref)
    assert torch.allclose(out[fin], ref[fin], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_attention_fully_masked_rows_are_zero(backend):
    q, k, v = torch.randn(1, 2, 4, 8), torch.randn(1, 2, 6, 8), torch.randn(1, 2, 6, 8)
    mask = torch.ones(4, 6, dtype=torch.bool)
    mask[2] = False
    with llmaccel.backends.use(backend):
        out = llmaccel.attention(q, k, v, attn_mask=mask)
    assert (out[:, :, 2] == 0).all() and torch.isfinite(out).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_int8_linear_special_values(backend, value):
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(6, 40, generator=gen)
    x[2, 7] = value
    w = torch.randint(-127, 128, (9, 40), dtype=torch.int8, generator=gen)
    s = torch.rand(9, generator=gen) * 0.01 + 1e-3
    b = torch.randn(9, generator=gen)
    ref = F.linear(x, w.float() * s[:, None], b)
    with llmaccel.backends.use(backend):
        wo = llmaccel.int8_linear(x, w, s, b, act="weight_only")
        dyn = llmaccel.int8_linear(x, w, s, b, act="dynamic")
    assert torch.equal(torch.isfinite(wo), torch.isfinite(ref)), "weight_only: finiteness differs from F.linear"
    assert torch.equal(wo.isnan(), ref.isnan())
    assert dyn[2].isnan().all(), "dynamic: a non-finite input row must give a NaN output row"
    others = torch.arange(6) != 2
    assert torch.isfinite(dyn[others]).all(), "dynamic: other rows must stay finite"


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_rows_and_channels_give_bias_not_nan(backend):
    lin = torch.nn.Linear(32, 8)
    with torch.no_grad():
        lin.weight[3] = 0
    for act in ("dynamic", "weight_only"):
        m = llmaccel.nn.Int8Linear.from_linear(lin, act=act)
        assert torch.isfinite(m.weight_scale).all() and (m.weight[3] == 0).all()
        x = torch.randn(4, 32)
        x[1] = 0
        with llmaccel.backends.use(backend), torch.no_grad():
            y = m(x)
        assert torch.isfinite(y).all()
        assert torch.allclose(y[1], lin.bias.detach()), act
        assert torch.allclose(y[:, 3], lin.bias.detach()[3].expand(4)), act
    with llmaccel.backends.use(backend):
        q, sc = llmaccel.quantize_per_token(torch.zeros(3, 5))
    assert (q == 0).all() and (sc == 1).all()


def test_int8_mm_never_overflows_silently():
    # K = 131071 at the extremes: |sum| = 131071 * 128 * 128 < 2^31, exact.
    a = torch.full((2, 131071), -128, dtype=torch.int8)
    b = torch.full((131071, 3), -128, dtype=torch.int8)
    for backend in BACKENDS:
        with llmaccel.backends.use(backend):
            c = llmaccel.int8_mm(a, b)
        assert (c == 131071 * 128 * 128).all(), backend
    a2 = torch.ones(2, 131072, dtype=torch.int8)
    b2 = torch.ones(131072, 3, dtype=torch.int8)
    for backend in BACKENDS:
        with llmaccel.backends.use(backend), pytest.raises(ValueError, match="int8_mm.*131071"):
            llmaccel.int8_mm(a2, b2)


@pytest.mark.triton
def test_triton_quantize_and_w8a8_nonfinite_rows():
    """The Triton quantizer and the fused W8A8 kernel follow the same row numerics (interpreter on CPU)."""
    from helpers import INTERPRET

    if not (INTERPRET or torch.cuda.is_available()):
        pytest.skip("needs the Triton interpreter or a GPU")
    dev = "cuda" if torch.cuda.is_available() and not INTERPRET else "cpu"
    x = torch.randn(5, 40, device=dev)
    x[1, 3], x[2, 5], x[4, 0] = float("nan"), float("-inf"), float("inf")
    x[3] = 0
    w = torch.randint(-127, 128, (6, 40), dtype=torch.int8, device=dev)
    s = torch.rand(6, device=dev) * 0.01 + 1e-3
    with llmaccel.backends.use("triton"):
        q, sc = llmaccel.quantize_per_token(x)
        y = llmaccel.int8_linear(x, w, s, act="dynamic")
    q_ref, sc_ref = llmaccel.quantize_per_token_reference(x.cpu())
    assert torch.equal(q.cpu(), q_ref)
    assert torch.equal(sc.cpu().isnan(), sc_ref.isnan()) and torch.equal(sc.cpu()[[0, 3]], sc_ref[[0, 3]])
    assert y[[1, 2, 4]].isnan().all() and torch.isfinite(y[[0, 3]]).all() and (y[3] == 0).all()
