"""Checkpoints: every llmaccel module and a quantized model round-trip through
``torch.load(weights_only=True)`` and safetensors; a bad checkpoint raises before any kernel runs;
a checkpoint written on one CPU (ISA variant) gives the same results on another.

The packed weight layouts differ per ISA variant, which is why they are
never saved: a state_dict holds only plain tensors (int8 weight, fp32
scales, bias), and each machine packs them for its own kernels on first use.
"""

import io

import pytest
import torch

import llmaccel
from cpp_calls import int8_linear_dynamic_cpp, weight_only_cpp

safetensors_torch = pytest.importorskip("safetensors.torch")
MM_VARIANTS = llmaccel.cpu_info()["available_variants"].get("int8_mm", [])
WO_VARIANTS = llmaccel.cpu_info()["available_variants"].get("int8_linear_weight_only", [])


def _modules():
    torch.manual_seed(0)
    mha = llmaccel.nn.MultiheadAttention(32, 4, batch_first=True).eval()
    cached = llmaccel.nn.CachedAttention(32, 4, 2, bias=True).eval()
    q = llmaccel.nn.Int8Linear.from_linear(torch.nn.Linear(32, 48))
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 32),
                                torch.nn.LayerNorm(32), torch.nn.Linear(32, 10))
    llmaccel.quantize_(model, llmaccel.Int8Config(act="dynamic"))
    x = torch.randn(3, 7, 32)
    return {
        "MultiheadAttention": (mha, lambda m: m(x, x, x, need_weights=False)[0],
                               lambda: llmaccel.nn.MultiheadAttention(32, 4, batch_first=True).eval()),
        "CachedAttention": (cached, lambda m: m(x), lambda: llmaccel.nn.CachedAttention(32, 4, 2, bias=True).eval()),
        "Int8Linear": (q, lambda m: m(x), lambda: llmaccel.nn.Int8Linear(32, 48)),
        "quantized model": (model, lambda m: m(x), lambda: _fresh_quantized_model()),
    }


def _fresh_quantized_model():
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 32),
                                torch.nn.LayerNorm(32), torch.nn.Linear(32, 10))
    llmaccel.quantize_(model, llmaccel.Int8Config(act="dynamic"))
    return model


@pytest.mark.parametrize("name", ["MultiheadAttention", "CachedAttention", "Int8Linear", "quantized model"])
@pytest.mark.parametrize("fmt", ["torch-weights-only", "safetensors"])
def test_round_trip(name, fmt, tmp_path):
    module, run, fresh_fn = _modules()[name]
    with torch.no_grad():
        before = run(module)
    sd = module.state_dict()
    if fmt == "torch-weights-only":
        buf = io.BytesIO()
        torch.save(sd, buf)
        buf.seek(0)
        loaded = torch.load(buf, weights_only=True)
    else:
        path = tmp_path / "m.safetensors"
        safetensors_torch.save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
        loaded = safetensors_torch.load_file(str(path))
    fresh = fresh_fn()
    fresh.load_state_dict(loaded)
    with torch.no_grad():
        after = run(fresh)
    assert torch.equal(before, after), f"{name}: output changed after the {fmt} round trip"


@pytest.mark.parametrize("name", ["MultiheadAttention", "CachedAttention", "Int8Linear", "quantized model"])
def test_bad_checkpoints_raise_before_any_kernel(name):
    module, run, fresh_fn = _modules()[name]
    sd = module.state_dict()
    key = next(k for k, v in sd.items() if v.dim() == 2)
    bad_shape = dict(sd)
    bad_shape[key] = sd[key][:-1]
    missing = {k: v for k, v in sd.items() if k != key}
    bad_dtype = dict(sd)
    bad_dtype[key] = sd[key].to(torch.float64 if sd[key].dtype == torch.int8 else torch.int32)
    for broken, what in ((bad_shape, "size|shape"), (missing, "Missing")):
        with pytest.raises(RuntimeError, match=what):
            fresh_fn().load_state_dict(broken)
    if sd[key].dtype == torch.int8:  # our own int8 buffers check their dtype (float params are cast by torch)
        with pytest.raises((RuntimeError, TypeError, ValueError), match="int8|dtype"):
            fresh_fn().load_state_dict(bad_dtype)


def test_checkpoint_from_one_variant_gives_the_same_results_on_another():
    """The same saved Int8Linear, run by every C++ variant this CPU has (what another machine would run):
    dynamic outputs agree to fp32 rounding (the int32 core is exact, so only the epilogue's rounding can
    differ); weight-only to fp32 accumulation order."""
    torch.manual_seed(3)
    src = llmaccel.nn.Int8Linear.from_linear(torch.nn.Linear(300, 77))
    buf = io.BytesIO()
    torch.save(src.state_dict(), buf)
    buf.seek(0)
    m = llmaccel.nn.Int8Linear(300, 77)
    m.load_state_dict(torch.load(buf, weights_only=True))
    x = torch.randn(9, 300)
    w, s, b = m.weight, m.weight_scale, m.bias.detach()
    dyn = {v: int8_linear_dynamic_cpp(x, w, s, b, v, 2) for v in MM_VARIANTS}
    wo = {v: weight_only_cpp(x, w, s, b, v, 2) for v in ["generic"] + [v for v in WO_VARIANTS if v != "generic"]}
    base = dyn[MM_VARIANTS[-1]]
    for v, y in dyn.items():
        assert torch.allclose(y, base, rtol=2e-6, atol=1e-6 * float(base.abs().max())), v
    with torch.no_grad():
        assert torch.allclose(m(x), base, rtol=2e-6, atol=1e-6 * float(base.abs().max()))
    base_wo = wo["generic"]
    for v, y in wo.items():
        assert torch.allclose(y, base_wo, rtol=1e-5, atol=1e-5 * float(base_wo.abs().max())), v
