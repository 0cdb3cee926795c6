"""Property-based tests of the sparse layer (issue 10's fuzzing, for the op family of issue 9).

Random shapes (1, primes, tails of N:M groups), patterns, methods, value kinds (extreme, subnormal,
signed zero) and x views go through ``prune``, every compressed format and the C++ N:M kernel
(every ISA variant this CPU runs). Each call must match the float64 reference within the kernel's
documented bound, round-trip bit for bit, or raise a clear error naming the op. Budget as in
tests/test_fuzz.py: ``LLMACCEL_FUZZ_EXAMPLES`` (25 in CI), ``LLMACCEL_FUZZ_RANDOM=1`` for new seeds.
"""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import llmaccel
from llmaccel.sparsity import BitmapWeight, BSRWeight, NMPackedWeight, prune, sparse_linear_reference
from llmaccel.sparsity.cpu_kernel import nm_linear_cpp

from test_fuzz import FUZZ, LAYOUTS, view_of

NM_VARIANTS = llmaccel.cpu_info()["available_variants"].get("sparse_nm", [])
PATTERNS = st.sampled_from(["2:4", "1:2", "4:8", "1:4", "3:5", "2:16"])
SIZE = st.one_of(st.sampled_from([1, 2, 3, 4, 5, 7, 8, 13, 17, 31, 64, 113]), st.integers(1, 300))


@st.composite
def weights(draw, rows, cols, dtype=torch.float32):
    """A weight with no exact zeros, in one of several value regimes."""
    kind = draw(st.sampled_from(["normal", "huge", "tiny", "mixed"]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2 ** 31)))
    w = torch.randn(rows, cols, generator=g, dtype=torch.float64)
    w = torch.where(w == 0, 1.0, w)
    if kind == "huge":
        w = w * 1e30
    elif kind == "tiny":
        w = w * 1e-40  # fp32 subnormals
    elif kind == "mixed":  # magnitudes spread over 60 binades, and a signed zero kept as a value
        w = w * torch.pow(2.0, torch.randint(-30, 30, (rows, cols), generator=g).double())
        w[0, 0] = -0.0
    return w.to(dtype)


@FUZZ
@given(rows=SIZE, cols=SIZE, pattern=st.sampled_from(["2:4", "1:2", "4:8", "3:5", "unstructured", "block"]),
       method=st.sampled_from(["magnitude", "wanda"]), dtype=st.sampled_from([torch.float32, torch.bfloat16]),
       quantize=st.sampled_from([None, "int8"]), data=st.data())
def test_prune_and_formats_round_trip(rows, cols, pattern, method, dtype, quantize, data):
    w = data.draw(weights(rows, cols, dtype))
    norms = torch.rand(cols, dtype=torch.float64) + 0.5 if method == "wanda" else None
    kw = dict(sparsity=0.5) if pattern in ("unstructured", "block") else {}
    if pattern == "block":
        kw["block_size"] = (data.draw(st.sampled_from([1, 4, 16])), data.draw(st.sampled_from([1, 4, 16])))
    mask = prune(w, pattern, method=method, activation_norms=norms, **kw)
    assert mask.shape == w.shape and mask.dtype == torch.bool
    if ":" in pattern:  # N kept per full group of M along K (a tail group of L columns keeps ceil(N L / M))
        n, m = (int(s) for s in pattern.split(":"))
        full = cols // m * m
        if full:
            assert bool((mask[:, :full].reshape(rows, -1, m).sum(-1) == n).all())
    formats = [BitmapWeight.from_dense(w, mask, quantize=quantize)]
    if ":" in pattern:
        formats.append(NMPackedWeight.from_dense(w, mask, pattern, quantize=quantize))
    formats.append(BSRWeight.from_dense(w, mask, kw.get("block_size", (4, 4)), quantize=quantize))
    pruned = torch.where(mask, w, torch.zeros((), dtype=w.dtype))
    for f in formats:
        back = type(f).from_state_dict(f.state_dict())
        if quantize is None:
            assert torch.equal(back.to_dense(), pruned), type(f).__name__
            assert torch.equal(back.to_dense().view(torch.int16 if dtype == torch.bfloat16 else torch.int32),
                               pruned.view(torch.int16 if dtype == torch.bfloat16 else torch.int32))  # -0.0 kept
        else:
            q, scale = back.int8_dense()
            assert q.dtype == torch.int8 and int(q.abs().max()) <= 127
            assert bool(((q.double() * scale.double()[:, None] - pruned.double()).abs()
                         <= scale.double()[:, None] / 2 * (1 + 1e-6)).all()), type(f).__name__


def _draw_x(data, lead, K, w, layout):
    """x [*lead, K] in the weights' value regimes as a ``layout`` view, scaled so every product and sum stays
    inside fp32's range (huge and tiny magnitudes, but overflow is not the point here)."""
    M = 1
    for d in lead:
        M *= d
    x2 = data.draw(weights(M, K))
    peak = float(w.double().abs().max()) * float(x2.double().abs().max()) * K
    if peak > 1e36:
        x2 = (x2.double() * (1e36 / peak)).float()
    x2 = view_of(x2, layout)
    return x2.reshape(*lead, K) if x2.is_contiguous() else x2.contiguous().reshape(*lead, K)


def _assert_within_fp32_bound(y, x, weight, b, shape, what=""):
    """y has ``shape`` in fp32 and |y - ref| <= 1e-5 * (sum_k |x||w| + |bias|) + K * 2^-149, ref in float64."""
    ref = sparse_linear_reference(x, weight, b, dtype=torch.float64)
    mag = x.double().abs() @ weight.to_dense().double().abs().T + (b.double().abs() if b is not None else 0)
    err = (y.double() - ref).abs()
    assert y.shape == shape and y.dtype == torch.float32
    assert bool((err <= 1e-5 * mag + x.shape[-1] * 2.0 ** -149).all()), f"{what}worst err {float(err.max()):.3g}"


@pytest.mark.skipif(not NM_VARIANTS, reason="llmaccel._C has no sparse_nm variant here")
@FUZZ
@given(lead=st.lists(st.sampled_from([1, 2, 3, 5]), min_size=1, max_size=2), K=SIZE, N=SIZE, pattern=PATTERNS,
       quantize=st.sampled_from([None, "int8"]), bias=st.booleans(), layout=st.sampled_from(LAYOUTS),
       variant=st.sampled_from(NM_VARIANTS or ["generic"]), data=st.data())
def test_nm_linear_matches_reference(lead, K, N, pattern, quantize, bias, layout, variant, data):
    w = data.draw(weights(N, K))
    packed = NMPackedWeight.from_dense(w, prune(w, pattern), pattern, quantize=quantize)
    x = _draw_x(data, lead, K, w, layout)
    b = torch.randn(N) if bias else None
    try:
        y = nm_linear_cpp(x, packed, b, variant)
    except (ValueError, RuntimeError) as e:  # allowed only as a clear refusal naming the op
        assert "sparse_nm_linear" in str(e) or "nm_linear" in str(e), str(e)
        return
    _assert_within_fp32_bound(y, x, packed, b, (*lead, N))


@pytest.mark.skipif(not NM_VARIANTS, reason="llmaccel._C has no sparse_nm variant here")
@FUZZ
@given(what=st.sampled_from(["x dtype", "x K", "bias N", "bias dtype", "device-less variant", "x 0-d"]),
       data=st.data())
def test_nm_linear_bad_input_names_the_op(what, data):
    w = torch.randn(8, 16)
    packed = NMPackedWeight.from_dense(w, prune(w, "2:4"), "2:4")
    x, b, variant = torch.randn(3, 16), torch.randn(8), ""
    if what == "x dtype":
        x = x.double()
    elif what == "x K":
        x = torch.randn(3, data.draw(st.sampled_from([0, 15, 17, 32])))
    elif what == "bias N":
        b = torch.randn(data.draw(st.sampled_from([1, 7, 9])))
    elif what == "bias dtype":
        b = b.half()
    elif what == "device-less variant":
        variant = "avx9000"
    else:
        x = torch.tensor(1.0)
    with pytest.raises((ValueError, TypeError, RuntimeError)) as e:
        nm_linear_cpp(x, packed, b, variant)
    assert "sparse_nm_linear" in str(e.value) or "nm_linear" in str(e.value), str(e.value)


def _format(kind: str, w: torch.Tensor, quantize):
    if kind == "nm":
        return NMPackedWeight.from_dense(w, prune(w, "2:4"), "2:4", quantize=quantize)
    if kind == "bitmap":
        return BitmapWeight.from_dense(w, prune(w, "unstructured", sparsity=0.6), quantize=quantize)
    return BSRWeight.from_dense(w, prune(w, "block", sparsity=0.5, block_size=(4, 8)), (4, 8), quantize=quantize)


@FUZZ
@given(lead=st.lists(st.sampled_from([1, 2, 3, 5]), min_size=1, max_size=2), K=SIZE, N=SIZE,
       kind=st.sampled_from(["nm", "bitmap", "bsr"]), quantize=st.sampled_from([None, "int8"]), bias=st.booleans(),
       layout=st.sampled_from(LAYOUTS), backend=st.sampled_from(["auto", "torch", "cpp"]), data=st.data())
def test_sparse_linear_op_matches_reference(lead, K, N, kind, quantize, bias, layout, backend, data):
    """The public op on every backend this machine runs (auto picks, cpp falls back with a reason when it
    cannot run a case): float64-reference bound, or a clear error naming the op."""
    w = data.draw(weights(N, K))
    fmt = _format(kind, w, quantize)
    x = _draw_x(data, lead, K, w, layout)
    b = torch.randn(N) if bias else None
    try:
        with llmaccel.backends.use(backend):
            y = llmaccel.sparse_linear(x, *llmaccel.sparse_linear_fields(fmt), b)
    except llmaccel.backends.BackendUnavailable as e:  # an explicit request the backend cannot serve
        assert backend != "auto" and "sparse_linear" in str(e), str(e)
        return
    _assert_within_fp32_bound(y, x, fmt, b, (*lead, N), f"{kind} {backend}: ")


@pytest.mark.skipif(len(NM_VARIANTS) < 2, reason="one sparse_nm variant on this CPU: nothing to compare across")
def test_sparse_checkpoint_loads_on_another_variant(tmp_path):
    """A SparseLinear saved while the best variant runs loads and gives the same results (within the kernels'
    bound) under the generic variant: the state is plain format tensors, independent of the ISA."""
    torch.manual_seed(0)
    m = llmaccel.nn.SparseLinear.from_linear(torch.nn.Linear(256, 96), "2:4")
    x = torch.randn(3, 256)
    with torch.no_grad():
        y = m(x)
    torch.save(m.state_dict(), tmp_path / "s.pt")
    m2 = llmaccel.nn.SparseLinear.from_linear(torch.nn.Linear(256, 96), "2:4")
    m2.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    with llmaccel.cpu.cpu_isa("generic"), torch.no_grad():
        y2 = m2(x)
    mag = x.double().abs() @ m.to_dense().double().abs().T + m.bias.double().abs()
    assert bool(((y2.double() - y.double()).abs() <= 2e-5 * mag).all())
