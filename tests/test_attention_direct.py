"""The direct CPU road of ``llmaccel.attention`` (llmaccel/ops/attention.py, ``_direct_cpu``): decode-sized
fp32 calls reach the C++ kernel without the op road's full check and selection.  It must run only where
the dispatcher would pick ``cpp`` itself, give exactly the op road's result, and stand aside for
everything the op road must see (autograd, a backend request, other dtypes, the profiler, bad shapes)."""

import importlib

import pytest
import torch

import llmaccel
from llmaccel import backends

am = importlib.import_module("llmaccel.ops.attention")

pytestmark = pytest.mark.skipif("cpp" not in backends.available_backends("cpu"), reason="needs the C++ extension")


def _cases():
    g = torch.Generator().manual_seed(0)

    def r(*shape):
        return torch.randn(*shape, generator=g) * 2

    B, Hq, Hkv, D = 2, 6, 3, 17
    for Lq, Lk in ((1, 1), (1, 40), (3, 113), (17, 17)):
        q, k, v = r(B, Hq, Lq, D), r(B, Hkv, Lk, D), r(B, Hkv, Lk, 13)
        yield "gqa", (q, k, v, None, False, None, True, False)
        yield "bool mask", (q, k, v, torch.rand(B, 1, Lq, Lk, generator=g) > 0.3, False, None, True, False)
        yield "float mask 2-D", (q, k, v, r(Lq, Lk), False, 0.3, True, False)
        if Lq <= Lk:
            yield "causal bottom-right", (q, k, v, None, True, None, True, True)
        # strided views: a transposed [B, L, H, D] layout as transformers' q/k/v are
        qt = r(B, Lq, Hq, D).transpose(1, 2)
        kt, vt = r(B, Lk, Hkv, D).transpose(1, 2), r(B, Lk, Hkv, 13).transpose(1, 2)
        yield "strided", (qt, kt, vt, None, False, None, True, False)
    yield "empty keys", (r(1, 2, 3, 4), r(1, 2, 0, 4), r(1, 2, 0, 4), None, False, None, False, False)


@pytest.mark.parametrize("name, call", list(_cases()), ids=[n for n, _ in _cases()])
def test_direct_road_equals_the_op_road_and_the_reference(name, call):
    q, k, v, mask, causal, scale, gqa, cbr = call
    with torch.no_grad():
        direct = am._direct_cpu(q, k, v, mask, causal, scale, gqa, cbr)
        assert direct is not None, "a plain fp32 CPU call must take the direct road"
        # The dispatcher, asked the same question, picks the same kernel.
        assert backends.explain("attention", q, k, v, mask, 0.0, causal, scale, gqa,
                                causal_bottom_right=cbr).backend == "cpp"
        with backends.use("cpp"):  # the op road, same kernel
            via_op = llmaccel.attention(q, k, v, mask, 0.0, causal, scale, gqa, causal_bottom_right=cbr,
                                        return_lse=True)
    assert torch.equal(direct[0], via_op[0]) and torch.equal(direct[1], via_op[1])
    # both roads give out_empty's layout ([B, Lq, Hq, Dv] memory), so the heads merge back as a view
    assert direct[0].stride() == via_op[0].stride() and direct[0].dtype == torch.float32
    assert direct[0].numel() == 0 or direct[0].transpose(1, 2).is_contiguous()
    Lq, Lk = q.shape[2], k.shape[2]
    if Lk == 0:  # every row fully masked: zeros (never NaN), lse -inf
        assert torch.equal(direct[0], torch.zeros_like(direct[0])) and bool((direct[1] == float("-inf")).all())
        return
    # float64 reference: SDPA's math on doubles, the causal pattern aligned to the end of the keys
    m = mask.double() if mask is not None and mask.is_floating_point() else mask
    if causal:
        m = torch.ones(Lq, Lk, dtype=torch.bool).tril(Lk - Lq)
    ref = torch.nn.functional.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=m,
                                                           scale=scale, enable_gqa=gqa)
    torch.testing.assert_close(direct[0].double(), ref, rtol=1e-5, atol=1e-5)


def _decode():
    torch.manual_seed(1)
    return torch.randn(1, 8, 1, 16), torch.randn(1, 2, 9, 16), torch.randn(1, 2, 9, 16)


def test_direct_road_stands_aside():
    q, k, v = _decode()
    args = (None, False, None, True, False)
    assert am._direct_cpu(q, k, v, *args) is not None
    # autograd
    qg = q.clone().requires_grad_()
    assert am._direct_cpu(qg, k, v, *args) is None
    with torch.no_grad():
        assert am._direct_cpu(qg, k, v, *args) is not None  # no graph to build: nothing needs the boundary
    # an explicit backend request
    with backends.use("torch"):
        assert am._direct_cpu(q, k, v, *args) is None
    # other dtypes, devices and layouts
    assert am._direct_cpu(q.half(), k.half(), v.half(), *args) is None
    assert am._direct_cpu(q.double(), k.double(), v.double(), *args) is None
    assert am._direct_cpu(q, k, v, torch.ones(1, 1, 1, 9, dtype=torch.float16), False, None, True, False) is None
    # the profiler must see the op by name
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]):
        assert am._direct_cpu(q, k, v, *args) is None
    # a tensor subclass
    class Sub(torch.Tensor):
        pass
    assert am._direct_cpu(q.as_subclass(Sub), k, v, *args) is None


@pytest.mark.parametrize("bad, match", [
    (lambda q, k, v: (q, k, v[..., :5, :], None, False), "key and value"),
    (lambda q, k, v: (q, k[..., :3], v, None, False), "head dim"),
    (lambda q, k, v: (q[:, :7], k, v, None, False), "multiple"),
    (lambda q, k, v: (q, k, v, torch.ones(1, 1, 2, 9, dtype=torch.bool), False), "broadcast"),
    (lambda q, k, v: (q, k, v, torch.ones(1, 1, 1, 9, dtype=torch.bool), True), "is_causal"),
])
def test_bad_calls_take_the_op_road_and_raise_its_error(bad, match):
    q, k, v = _decode()
    qq, kk, vv, mask, causal = bad(q, k, v)
    assert am._direct_cpu(qq, kk, vv, mask, causal, None, True, False) is None
    with pytest.raises(ValueError, match=match):
        llmaccel.attention(qq, kk, vv, mask, 0.0, causal, None, True)


def test_public_function_uses_it_and_profiles_by_name():
    q, k, v = _decode()
    with torch.no_grad():
        want = am._direct_cpu(q, k, v, None, False, None, True, False)[0]
        assert torch.equal(llmaccel.attention(q, k, v, enable_gqa=True), want)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            got = llmaccel.attention(q, k, v, enable_gqa=True)
    assert torch.equal(got, want)
    assert any(e.key == "llmaccel::attention" for e in prof.key_averages())
