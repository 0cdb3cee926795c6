"""The dispatcher: automatic choice, overrides, explanations, fallbacks."""

import logging

import pytest
import torch

import llmaccel
from llmaccel import backends

from helpers import INTERPRET, int8_mm_exact, randint8


def _ab():
    return randint8(3, 20), randint8(4, 20).t()


@pytest.mark.skipif(INTERPRET, reason="the interpreter pass forces LLMACCEL_BACKEND=triton")
def test_auto_picks_cpp_on_cpu(monkeypatch):
    monkeypatch.delenv("LLMACCEL_BACKEND", raising=False)
    a, b = _ab()
    ex = backends.explain("int8_mm", a, b)
    assert ex.requested == "auto" and ex.backend == "cpp"
    assert set(ex.refused) == {"triton", "torch"}
    assert "int8_mm" in str(ex) and "-> cpp" in str(ex)


def test_context_manager_wins_over_environment(monkeypatch):
    monkeypatch.setenv("LLMACCEL_BACKEND", "cpp")
    a, b = _ab()
    assert backends.explain("int8_mm", a, b).backend == "cpp"
    with backends.use("torch"):
        assert backends.current() == "torch"
        ex = backends.explain("int8_mm", a, b)
        assert ex.backend == "torch"
        assert "not requested" in ex.refused["cpp"]
        assert torch.equal(llmaccel.int8_mm(a, b), int8_mm_exact(a, b))
    assert backends.current() == "cpp"


def test_environment_variable_is_validated(monkeypatch):
    monkeypatch.setenv("LLMACCEL_BACKEND", "cuda-magic")
    with pytest.raises(ValueError, match="LLMACCEL_BACKEND must be one of"):
        llmaccel.int8_mm(*_ab())
    with pytest.raises(ValueError, match="backend must be one of"):
        with backends.use("fast"):
            pass


@pytest.mark.skipif(INTERPRET, reason="Triton is usable on CPU under the interpreter")
def test_explicit_request_that_cannot_run_says_why():
    a, b = _ab()
    with backends.use("triton"):
        with pytest.raises(backends.BackendUnavailable, match=r"int8_mm: backend 'triton'.*TRITON_INTERPRET"):
            llmaccel.int8_mm(a, b)
        assert backends.explain("int8_mm", a, b).backend is None


def test_cpp_refuses_non_cpu_tensors_with_reason():
    a = torch.empty(3, 4, dtype=torch.int8, device="meta")
    b = torch.empty(4, 2, dtype=torch.int8, device="meta")
    ex = backends.explain("int8_mm", a, b)
    assert "CPU tensors" in ex.refused["cpp"]


@pytest.mark.skipif(INTERPRET, reason="the interpreter pass forces LLMACCEL_BACKEND=triton")
def test_auto_fallback_logs_once(monkeypatch, caplog):
    monkeypatch.delenv("LLMACCEL_BACKEND", raising=False)
    monkeypatch.setitem(backends._DEVICE_PROBLEM, "cpp", lambda device: "pretend the extension is missing")
    monkeypatch.setattr(backends, "_logged", set())
    a, b = _ab()
    with caplog.at_level(logging.WARNING, logger="llmaccel"):
        for _ in range(3):
            assert torch.equal(llmaccel.int8_mm(a, b), int8_mm_exact(a, b))
    msgs = [r.getMessage() for r in caplog.records if r.name == "llmaccel"]
    assert len(msgs) == 1 and "falling back from cpp to torch" in msgs[0] and "pretend" in msgs[0]
    assert backends.explain("int8_mm", a, b).backend == "torch"


def test_explain_unknown_op():
    with pytest.raises(ValueError, match="unknown op 'nope'"):
        backends.explain("nope")


def test_cpu_info_reports_features_and_variants():
    info = llmaccel.cpu_info()
    assert info["extension"] == "loaded"
    variants = info["available_variants"]["int8_mm"]
    assert variants[-1] == "generic"
    assert info["variants"]["int8_mm"] == variants[0]
    if {"amx_tile", "amx_int8", "avx512vnni", "avx512bw"} <= set(info["features"]):
        assert variants[0] == "amx"
    elif "avx512vnni" in info["features"] and "avx512bw" in info["features"]:
        assert variants[0] == "avx512vnni"
    assert info["num_threads"] == torch.get_num_threads()


# --- public functions: the custom-op boundary is taken exactly when something needs it ---

class _RecordOps(torch.utils._python_dispatch.TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def test_plain_eager_call_skips_the_custom_op_layer_and_matches_it():
    import importlib

    mod = importlib.import_module("llmaccel.ops.int8_linear")
    x = torch.randn(3, 40)
    w, s, bias = randint8(24, 40), torch.rand(24) + 0.01, torch.randn(24)
    assert not backends._op_boundary_needed([x, w, s, bias])
    direct = llmaccel.int8_linear(x, w, s, bias)
    through_op = torch.ops.llmaccel.int8_linear(x, w, s, bias, "dynamic")
    assert torch.equal(direct, through_op)
    torch.testing.assert_close(direct, mod.int8_linear_reference(x, w, s, bias, "dynamic"), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("why", ["requires_grad", "dispatch_mode", "fake", "subclass"])
def test_boundary_is_taken_when_needed(why):
    x = torch.randn(2, 16)
    w, s = randint8(8, 16), torch.rand(8) + 0.01
    if why == "requires_grad":
        x.requires_grad_(True)
        assert backends._op_boundary_needed([x, w, s])
        llmaccel.int8_linear(x, w, s).sum().backward()  # autograd only exists on the op road
        assert x.grad is not None and x.grad.shape == x.shape
    elif why == "dispatch_mode":
        with _RecordOps() as rec:
            llmaccel.int8_linear(x, w, s)
            llmaccel.int8_mm(randint8(2, 16), randint8(16, 3))
            llmaccel.quantize_per_token(x)
            q = torch.randn(1, 2, 3, 8)
            llmaccel.attention(q, q, q)
        seen = {o for o in rec.ops if o.startswith("llmaccel.")}
        assert seen == {"llmaccel.int8_linear.default", "llmaccel.int8_mm.default",
                        "llmaccel.quantize_per_token.default", "llmaccel.attention.default"}
    elif why == "fake":
        from torch._subclasses.fake_tensor import FakeTensorMode

        with FakeTensorMode():
            fx, fw, fs = torch.empty(5, 16), torch.empty(8, 16, dtype=torch.int8), torch.empty(8)
            y = llmaccel.int8_linear(fx, fw, fs)
        assert y.shape == (5, 8)
    else:
        class Sub(torch.Tensor):
            pass

        assert backends._op_boundary_needed([x.as_subclass(Sub), w, s])
    assert not backends._op_boundary_needed([torch.randn(2, 16), w, s])


def test_non_tensor_on_the_op_road_names_op_and_argument():
    # A trainable bias sends the call through torch.ops; a bad x must still get our TypeError.
    w, s = randint8(8, 16), torch.rand(8) + 0.01
    bias = torch.randn(8, requires_grad=True)
    with pytest.raises(TypeError, match=r"llmaccel\.int8_linear: x must be a torch\.Tensor, got list"):
        llmaccel.int8_linear([[0.0] * 16], w, s, bias)
    with pytest.raises(TypeError, match=r"llmaccel\.int8_linear: x must be a torch\.Tensor, got list"):
        llmaccel.int8_linear([[0.0] * 16], w, s, bias.detach())  # direct road: the body's own check


# --- explain() takes exactly the public function's arguments, for every registered op ---

def _explain_cases():
    """op -> (the full positional call of torch.ops.llmaccel.<op>, [(args, kwargs) forms of the same public call])."""
    torch.manual_seed(0)
    a, b = randint8(3, 20), randint8(4, 20).t()
    x = torch.randn(3, 20)
    w, s, bias = randint8(6, 20), torch.rand(6) + 0.01, torch.randn(6)
    q, k, v = torch.randn(1, 2, 5, 8), torch.randn(1, 2, 7, 8), torch.randn(1, 2, 7, 8)
    out, lse = llmaccel.attention(q, k, v, return_lse=True)
    bwd = (q, k, v, None, out, lse, torch.randn_like(out), None, 0.0, False, None, False, None, False)
    sparse = (x, *llmaccel.sparse_linear_fields(llmaccel.sparsity.NMPackedWeight.from_dense(
        torch.randn(6, 20), llmaccel.sparsity.prune(torch.randn(6, 20), "2:4"), "2:4")), None)
    sparse_names = ["x", "values", "index", "offsets", "scale", "layout", "meta", "bias"]
    bwd_names = ["dropout_p", "is_causal", "scale", "causal_bottom_right", "dropout_seed", "need_mask_grad"]
    return {
        "int8_mm": ((a, b), [((a, b), {}), ((a,), {"b": b}), ((), {"a": a, "b": b})]),
        "quantize_per_token": ((x,), [((x,), {}), ((), {"x": x})]),
        "int8_linear": ((x, w, s, None, "dynamic"), [
            ((x, w, s), {}),                                              # bias and act left at their defaults
            ((x, w, s, None), {"act": "dynamic"}),
            ((), {"x": x, "w_int8": w, "w_scale": s}),
        ]),
        "attention": ((q, k, v, None, 0.0, False, None, False, False), [
            ((q, k, v), {}),
            ((q, k, v, None, 0.0), {"is_causal": False, "return_lse": True}),
            ((), {"query": q, "key": k, "value": v, "causal_bottom_right": False, "scale": None}),
        ]),
        # No public function: explain takes the op's own arguments (the saved forward and the output gradients).
        "attention_backward": (bwd, [(bwd, {}), (bwd[:8], dict(zip(bwd_names, bwd[8:])))]),
        "sparse_linear": (sparse, [(sparse, {}), (sparse[:7], {"bias": None}), ((), dict(zip(sparse_names, sparse)))]),
        "sparse_linear_backward": ((torch.randn(3, 6), *sparse[:7], True, True),
                                   [((torch.randn(3, 6), *sparse[:7]), {"need_x": True, "need_values": True})]),
    }


def test_explain_accepts_every_ops_public_signature():
    cases = _explain_cases()
    assert set(cases) == set(backends._REGISTRY), "every registered op needs a case here"
    for op, (full, forms) in cases.items():
        ref = backends.explain(op, *full)  # the custom op's own positional form still works
        assert ref.backend is not None, ref
        for args, kwargs in forms:
            ex = backends.explain(op, *args, **kwargs)
            assert (ex.backend, ex.refused, ex.notes) == (ref.backend, ref.refused, ref.notes), (op, args, kwargs)


def test_explain_sees_keyword_arguments():
    c = _explain_cases()
    x, w, s, bias, _ = c["int8_linear"][0]
    # The README's call: bias positional, act by keyword.
    assert backends.explain("int8_linear", x, w, s, torch.randn(6), act="dynamic").notes == []
    auto = backends.explain("int8_linear", x, w, s, act="auto")
    assert any("act='auto' ->" in n for n in auto.notes), auto
    q, k, v = c["attention"][0][:3]
    ex = backends.explain("attention", q, k, v, dropout_p=0.1)
    assert ex.backend == "torch" and "dropout" in ex.refused["cpp"], ex


@pytest.mark.parametrize("call, match", [
    (lambda x, w, s: backends.explain("int8_linear", x, w, s, actt="dynamic"), r"explain\('int8_linear'.*actt"),
    (lambda x, w, s: backends.explain("int8_linear", x), r"explain\('int8_linear'.*missing.*w_int8"),
    (lambda x, w, s: backends.explain("int8_mm", x, x, x), r"explain\('int8_mm'.*too many"),
    (lambda x, w, s: backends.explain("quantize_per_token"), r"explain\('quantize_per_token'.*missing.*x"),
    (lambda x, w, s: backends.explain("attention", x, x, x, bogus=1), r"explain\('attention'.*bogus"),
])
def test_explain_wrong_arguments_raise_a_type_error_naming_the_op(call, match):
    x, w, s = torch.randn(3, 20), randint8(6, 20), torch.rand(6) + 0.01
    with pytest.raises(TypeError, match=match):
        call(x, w, s)


def test_explain_validates_values_like_the_op():
    with pytest.raises(TypeError, match=r"int8_linear.*w_int8"):
        backends.explain("int8_linear", torch.randn(3, 20), torch.randn(6, 20), torch.rand(6) + 0.01)
