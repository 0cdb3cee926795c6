"""Everything built or called under ``torch.inference_mode()``.

Tensors created there are *inference tensors*: they have no version counter, which llmaccel's caches (packed
weights, validated SmoothQuant factors, prepared calls) use to notice in-place changes.  Before the fix,
reading it raised ``RuntimeError: Inference tensors do not track version counter`` from ``quantize_``, from
``Int8Linear`` / ``SparseLinear`` built under inference mode, and from the functional op on inference weights.
These tests pin down: it works, the answer equals the reference, and an in-place change to an inference
weight is seen (the caches recompute rather than trust an entry they cannot validate)."""

import copy
import importlib

import pytest
import torch
from torch import nn

import llmaccel
from llmaccel import backends
from llmaccel.nn import Int8Linear, SparseLinear
from llmaccel.ops import prepared

il = importlib.import_module("llmaccel.ops.int8_linear")


def _tensors(m):
    return [t for t in list(m.parameters()) + list(m.buffers())]


@pytest.mark.parametrize("act", ["dynamic", "weight_only"])
@pytest.mark.parametrize("rows", [1, 3, 113])
def test_int8_linear_built_and_run_under_inference_mode(act, rows):
    torch.manual_seed(0)
    lin = nn.Linear(113, 67)
    s = torch.rand(113) + 0.5
    x = torch.randn(rows, 113) * 3
    with torch.inference_mode():
        layer = Int8Linear.from_linear(lin, act=act, smooth_scale=s, activation="gelu")
        assert not any(t.is_inference() for t in _tensors(layer))  # normal tensors: cacheable
        got = layer(x)
        got2 = layer(x)  # a second call through whatever the first one cached
    want = il.int8_linear_reference(x, layer.weight, layer.weight_scale, layer.bias, act, layer.smooth_scale,
                                    "gelu")
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert torch.equal(got, got2)
    # The same layer outside inference mode gives the same answer.
    assert torch.equal(layer(x).detach(), got)


@pytest.mark.parametrize("pattern", ["2:4", "unstructured"])
def test_sparse_linear_built_under_inference_mode(pattern):
    torch.manual_seed(1)
    lin = nn.Linear(64, 40)
    x = torch.randn(17, 64)
    with torch.inference_mode():
        layer = SparseLinear.from_linear(lin, pattern, sparsity=0.5 if pattern == "unstructured" else None)
        assert not any(t.is_inference() for t in _tensors(layer))
        got = layer(x)
        dense = layer.to_dense()
    want = x.double() @ dense.double().T + lin.bias.detach().double()
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("act", ["dynamic", "weight_only"])
def test_functional_op_on_inference_weights_sees_in_place_changes(act):
    """Inference tensors cannot be proven unchanged, so nothing derived from them may be reused: after an
    in-place write (allowed inside inference mode) the result must follow the new values."""
    torch.manual_seed(2)
    x = torch.randn(5, 64)
    with torch.inference_mode():
        w = torch.randint(-127, 128, (48, 64), dtype=torch.int8)
        scale = torch.rand(48) + 0.1
        smooth = torch.rand(64) + 0.5
        first = il.int8_linear(x, w, scale, None, act=act, smooth=smooth)
        torch.testing.assert_close(first, il.int8_linear_reference(x, w, scale, None, act, smooth, None),
                                   rtol=1e-4, atol=1e-4)
        w.neg_()
        second = il.int8_linear(x, w, scale, None, act=act, smooth=smooth)
        torch.testing.assert_close(second, -first, rtol=1e-4, atol=1e-4)
        smooth.fill_(-1.0)  # now invalid: the check must run again and say so
        with pytest.raises(ValueError, match="smooth"):
            il.int8_linear(x, w, scale, None, act=act, smooth=smooth)


def test_prepared_call_refuses_a_layer_holding_inference_tensors():
    """A layer whose weight was replaced by an inference tensor takes the public road on every call (the
    prepared call could not notice an in-place change), and follows an in-place change."""
    if "cpp" not in backends.available_backends("cpu"):
        pytest.skip("needs the C++ extension")
    torch.manual_seed(3)
    layer = Int8Linear.from_linear(nn.Linear(64, 32))
    x = torch.randn(1, 64)
    with torch.inference_mode():
        w = layer.weight.clone()  # an inference tensor
        layer.weight = w
        a = layer(x)
        assert prepared._calls[layer]._impl is None  # refused
        w.neg_()
        b = layer(x)
    torch.testing.assert_close(b, -a + 2 * layer.bias.detach(), rtol=1e-5, atol=1e-5)


def test_load_state_dict_under_inference_mode_is_seen():
    """load_state_dict inside inference mode copies into the layer's (normal) tensors and bumps their
    versions: the packed weight and the prepared call are rebuilt."""
    torch.manual_seed(4)
    a, b = Int8Linear.from_linear(nn.Linear(64, 32)), Int8Linear.from_linear(nn.Linear(64, 32))
    x = torch.randn(1, 64)
    with torch.inference_mode():
        a(x)  # prepare and pack a's weight
        a.load_state_dict(b.state_dict())
        assert torch.equal(a(x), b(x))
        xs = torch.randn(100, 64)  # the packed (large-M) road too
        assert torch.equal(a(xs), b(xs))


@pytest.mark.parametrize("quantize", ["int8", "int8-weight-only"])
def test_quantize_and_optimize_under_inference_mode(quantize):
    torch.manual_seed(5)
    layer = nn.TransformerEncoderLayer(64, 4, dim_feedforward=128, batch_first=True, dropout=0.0)
    model = nn.Sequential(nn.TransformerEncoder(layer, 2, enable_nested_tensor=False), nn.Linear(64, 48)).eval()
    x = torch.randn(3, 17, 64)
    with torch.inference_mode():
        ref = model(x)
        m = llmaccel.optimize(copy.deepcopy(model), quantize=quantize)
        out = m(x)
        q = copy.deepcopy(model)
        llmaccel.quantize_(q)
        out_q = q(x[:1, :1])
    cos = torch.nn.functional.cosine_similarity(out.reshape(-1, 48).double(), ref.reshape(-1, 48).double(), dim=-1)
    assert float(cos.min()) > 0.99
    assert out_q.shape == (1, 1, 48) and torch.isfinite(out_q).all()
    assert not any(t.is_inference() for mod in m.modules() if isinstance(mod, Int8Linear) for t in _tensors(mod))
