"""The prepared decode call (llmaccel/ops/prepared.py): Int8Linear's weight-side arguments validated and its
backend chosen once per layer.  It must give exactly what the public road gives, stand aside whenever the
public road could decide differently, and notice every change to the weights."""

import importlib

import pytest
import torch

import llmaccel
from llmaccel import backends
from llmaccel.nn import Int8Linear
from llmaccel.ops import prepared
from llmaccel.ops.prepared import PreparedCall

il = importlib.import_module("llmaccel.ops.int8_linear")

pytestmark = pytest.mark.skipif("cpp" not in backends.available_backends("cpu"), reason="needs the C++ extension")


def _layer(act, K=113, N=67, smooth=False, activation=None, seed=0):
    torch.manual_seed(seed)
    lin = torch.nn.Linear(K, N)
    s = torch.rand(K) + 0.5 if smooth else None
    return Int8Linear.from_linear(lin, act=act, smooth_scale=s, activation=activation)


def _public(layer, x):
    return il.int8_linear(x, layer.weight, layer.weight_scale, layer.bias, act=layer.act, smooth=layer.smooth_scale,
                          activation=layer.activation)


def _reference(layer, x):
    return il.int8_linear_reference(x, layer.weight, layer.weight_scale, layer.bias, layer.act, layer.smooth_scale,
                                    layer.activation)


@pytest.mark.parametrize("act, smooth, activation", [("dynamic", False, None), ("dynamic", True, "gelu"),
                                                     ("weight_only", False, None), ("weight_only", True, "relu")])
@pytest.mark.parametrize("rows", [1, 3, 17, 64])
def test_prepared_equals_the_public_road(act, smooth, activation, rows):
    layer = _layer(act, smooth=smooth, activation=activation)
    x = torch.randn(rows, 113) * 3
    with torch.inference_mode():
        got = layer(x)
        assert prepared._calls.get(layer)._impl is not None  # the prepared call ran
        want = _public(layer, x)
        ref = _reference(layer, x)
    assert torch.equal(got, want)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


def test_strided_and_batched_inputs():
    layer = _layer("dynamic")
    base = torch.randn(2, 3, 226)
    x = base[..., ::2]  # a strided view, [2, 3, 113]
    with torch.inference_mode():
        got = layer(x)
    assert prepared._calls.get(layer)._impl is not None and got.shape == (2, 3, 67)
    assert torch.equal(got, _public(layer, x.contiguous()))


def test_weight_changes_are_seen():
    layer = _layer("dynamic")
    x = torch.randn(1, 113)
    with torch.inference_mode():
        first = layer(x)
        call = prepared._calls.get(layer)
    with torch.no_grad():
        layer.weight.copy_(torch.flip(layer.weight, [0]))  # in place: the version counter moves
    with torch.inference_mode():
        second = layer(x)
    assert prepared._calls.get(layer) is not call
    assert torch.equal(second, _public(layer, x)) and not torch.equal(first, second)
    other = _layer("dynamic", seed=5)
    layer.load_state_dict(other.state_dict())
    with torch.inference_mode():
        assert torch.equal(layer(x), other(x))
    layer.weight_scale = torch.full_like(layer.weight_scale, 0.01)  # a new buffer object
    with torch.inference_mode():
        assert torch.equal(layer(x), _public(layer, x))
    layer.act = "weight_only"  # a non-tensor argument
    with torch.inference_mode():
        assert torch.equal(layer(x), _public(layer, x))


def test_it_stands_aside_for_what_the_public_road_decides():
    layer = _layer("weight_only")
    x = torch.randn(1, 113)
    calls = []
    real_run = PreparedCall.__call__

    def spy(self, x):
        out = real_run(self, x)
        calls.append(out is not None)
        return out

    PreparedCall.__call__ = spy
    try:
        with torch.inference_mode():
            layer(x)
            with backends.use("torch"):  # an explicit backend request
                torch.testing.assert_close(layer(x), _reference(layer, x), rtol=0, atol=0)
            layer(torch.randn(65, 113))  # M above the prepared range (weight-only runs torch's sgemm there)
            layer(x.bfloat16())  # not float32
        xg = x.clone().requires_grad_(True)
        layer(xg).sum().backward()  # autograd needs the op boundary
        assert xg.grad is not None and xg.grad.abs().sum() > 0
        layer.bias.grad = None
        layer(x).sum().backward()  # x needs no gradient, the trainable bias does
        assert layer.bias.grad is not None and torch.equal(layer.bias.grad, torch.ones(67))
    finally:
        PreparedCall.__call__ = real_run
    assert calls == [True, False, False, False, False, False], calls


def test_bad_weights_after_preparation_raise_on_the_public_road():
    layer = _layer("dynamic", smooth=True)
    x = torch.randn(1, 113)
    with torch.inference_mode():
        layer(x)
    with torch.no_grad():
        layer.smooth_scale[3] = float("nan")
    with torch.inference_mode(), pytest.raises(ValueError, match="int8_linear: smooth must be finite"):
        layer(x)


def test_auto_mode_is_never_prepared():
    layer = _layer("dynamic")
    layer.act = "auto"
    x = torch.randn(1, 113)
    with torch.inference_mode():
        got = layer(x)
    refusal = prepared._calls.get(layer)
    assert refusal is not None and refusal(x) is None  # refused once, kept: not rebuilt on every call
    with torch.inference_mode():
        layer(x)
    assert prepared._calls.get(layer) is refusal
    assert torch.equal(got, _public(layer, x))
    layer.act = "dynamic"  # the arguments changed: prepared again
    with torch.inference_mode():
        layer(x)
    assert prepared._calls.get(layer)._impl is not None


def test_the_prepared_map_does_not_keep_layers_alive_or_enter_state():
    import gc
    import weakref

    layer = _layer("dynamic")
    with torch.inference_mode():
        layer(torch.randn(1, 113))
    assert "_prepared" not in " ".join(layer.state_dict())
    ref = weakref.ref(layer)
    del layer
    gc.collect()
    assert ref() is None


@pytest.mark.parametrize("pattern, kw", [("2:4", {}), ("2:4", {"quantize": "int8", "act": "dynamic"}),
                                         ("unstructured", {"sparsity": 0.9}), ("unstructured", {"sparsity": 0.5}),
                                         ("block", {"sparsity": 0.5, "block_size": (4, 4)})])
@pytest.mark.parametrize("rows", [1, 3, 17, 64])  # 64: past the fp32 N:M kernel's crossover (another route)
def test_sparse_linear_prepared_equals_the_public_road(pattern, kw, rows):
    from llmaccel.nn import SparseLinear
    from llmaccel.ops.sparse_linear import sparse_linear

    torch.manual_seed(0)
    layer = SparseLinear.from_linear(torch.nn.Linear(116, 68), pattern, **kw)
    x = torch.randn(rows, 116)
    with torch.inference_mode():
        got = layer(x)
        assert prepared._calls.get(layer)._impl is not None
        want = sparse_linear(x, *layer._fields(), layer.bias, layer.act)
    assert torch.equal(got, want)


def test_smooth_is_revalidated_after_an_in_place_change():
    """int8_linear checks a smooth tensor once per version (not per call): an in-place change is seen."""
    layer = _layer("dynamic", smooth=True)
    x = torch.randn(100, 113)  # M > 64: the public road, every call
    with torch.inference_mode():
        layer(x)
        layer(x)
    with torch.no_grad():
        layer.smooth_scale[7] = -1.0
    with torch.inference_mode(), pytest.raises(ValueError, match="int8_linear: smooth must be finite and > 0"):
        layer(x)
    fresh = torch.rand(113) + 0.5
    fresh[0] = float("inf")
    with pytest.raises(ValueError, match="smooth must be finite"):
        il.int8_linear(x, layer.weight, layer.weight_scale, None, act="dynamic", smooth=fresh)


@pytest.mark.parametrize("sparsity", [0.5, 0.9])
def test_sparse_bitmap_decode_takes_the_bound_kernel_and_sees_new_weights(sparsity):
    """Unstructured layers at decode sizes call their bound bitmap / column-index kernel (no route or reshape per
    call), for 2-D and 3-D x alike; loading another layer's weights in place (same sizes) gives that layer's
    results, so the column indices derived at binding are rebuilt."""
    from llmaccel.nn import SparseLinear
    from llmaccel.ops.sparse_linear import sparse_linear

    torch.manual_seed(3)
    a = SparseLinear.from_linear(torch.nn.Linear(116, 68), "unstructured", sparsity=sparsity)
    b = SparseLinear.from_linear(torch.nn.Linear(116, 68), "unstructured", sparsity=sparsity)
    for x in (torch.randn(1, 116), torch.randn(2, 3, 116)):
        with torch.no_grad():
            got = a(x)
            call = prepared._calls.get(a)
            assert call._impl is not None and call._run is not None  # bound at preparation
            assert torch.equal(got, sparse_linear(x, *a._fields(), a.bias, a.act))
    assert a.values.numel() == b.values.numel()  # the same number of kept weights: load_state_dict copies in place
    with torch.no_grad():
        a.load_state_dict(b.state_dict())
        x = torch.randn(1, 116)
        assert torch.equal(a(x), b(x))
        assert torch.equal(a(x), sparse_linear(x, *b._fields(), b.bias, b.act))
