"""llmaccel._fuse_activation.fuse_activations_: the fused model computes what the unfused int8 model does.

Fusing changes no int8 code (the Linear's quantized input and its exact integer core are untouched); only the
activation is evaluated by the kernel's epilogue (csrc/activation.h) instead of torch, within ~1e-7 relative
per element, so the fused outputs must match the unfused int8 model's to a few 1e-6 relative (a BERT layer's
LayerNorm and the next quantization can amplify a 1e-7 change only where it flips a rounding tie of the next
layer's int8 codes, which is rare; the bound below allows a few such flips)."""

import copy

import pytest
import torch
from torch import nn

import llmaccel
from llmaccel._fuse_activation import activation_name, fuse_activations_
from llmaccel.nn import Int8Linear

transformers = pytest.importorskip("transformers")


def _int8_seq(*mods):
    torch.manual_seed(0)
    return nn.Sequential(*mods)


def test_sequential_runs_fused_and_equal():
    torch.manual_seed(0)
    ref = nn.Sequential(nn.Linear(33, 65), nn.GELU(), nn.Linear(65, 17), nn.ReLU(), nn.Linear(17, 9),
                        nn.GELU(approximate="tanh"), nn.Linear(9, 5), nn.Tanh(), nn.GELU())  # Tanh, float head: not fused
    llmaccel.quantize_(ref, llmaccel.Int8Config(act="dynamic"))
    fused = copy.deepcopy(ref)
    names = fuse_activations_(fused)
    assert names == ["0 + GELU -> activation='gelu'", "2 + ReLU -> activation='relu'",
                     "4 + GELU -> activation='gelu_tanh'"]
    assert [type(m).__name__ for m in fused] == ["Int8Linear", "Identity", "Int8Linear", "Identity",
                                                 "Int8Linear", "Identity", "Linear", "Tanh", "GELU"]  # quantize_ keeps the output head float
    assert "activation=gelu" in repr(fused[0])
    x = torch.randn(3, 7, 33) * 2
    with torch.inference_mode():
        a, b = ref(x), fused(x)
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), (a - b).abs().max()
    # The state_dict is unchanged and loads both ways.
    assert ref.state_dict().keys() == fused.state_dict().keys()
    fused.load_state_dict(ref.state_dict())
    assert fuse_activations_(fused) == []  # already fused: nothing left


def test_only_dynamic_unhooked_single_use_linears():
    torch.manual_seed(0)
    lin = nn.Linear(8, 8)
    weight_only = nn.Sequential(Int8Linear.from_linear(lin, act="weight_only"), nn.GELU())
    float_lin = nn.Sequential(nn.Linear(8, 8), nn.GELU())
    hooked = nn.Sequential(Int8Linear.from_linear(lin), nn.ReLU())
    hooked[1].register_forward_hook(lambda m, i, o: None)
    shared = Int8Linear.from_linear(lin)
    twice = nn.Sequential(nn.Sequential(shared, nn.ReLU()), shared)
    sub = type("MyGELU", (nn.GELU,), {"forward": lambda self, x: x * 2})()
    subclass = nn.Sequential(Int8Linear.from_linear(lin), sub)
    for m in (weight_only, float_lin, hooked, twice, subclass):
        assert fuse_activations_(m) == []
    assert activation_name(nn.GELU(approximate="tanh")) == "gelu_tanh"
    assert activation_name(transformers.activations.GELUActivation(use_gelu_python=True)) == "gelu"
    assert activation_name(transformers.activations.NewGELUActivation()) == "gelu_tanh"
    assert activation_name(transformers.activations.FastGELUActivation()) is None
    assert activation_name(nn.SiLU()) is None
    with pytest.raises(TypeError, match="fuse_activations_: model must be an nn.Module"):
        fuse_activations_("model")


@pytest.mark.parametrize("hidden_act", ["gelu", "gelu_new", "relu"])
def test_small_bert_fused_equals_unfused(hidden_act):
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=128, hidden_act=hidden_act, attn_implementation="eager")
    torch.manual_seed(0)
    model = transformers.BertModel(cfg).eval()
    ids = torch.randint(1, 100, (3, 19))
    calib = [{"input_ids": ids}]
    unfused = copy.deepcopy(model)
    llmaccel.quantize_(unfused, llmaccel.Int8Config(act="dynamic"))
    fused = copy.deepcopy(unfused)
    names = fuse_activations_(fused)
    expect = {"gelu": "gelu", "gelu_new": "gelu_tanh", "relu": "relu"}[hidden_act]
    assert names == [f"encoder.layer.{i}.intermediate.dense + {type(unfused.encoder.layer[i].intermediate.intermediate_act_fn).__name__}"
                     f" -> activation='{expect}'" for i in range(2)]
    for layer in fused.encoder.layer:
        assert isinstance(layer.intermediate.intermediate_act_fn, nn.Identity)
        assert layer.intermediate.dense.activation == expect
    with torch.inference_mode():
        a = unfused(input_ids=ids).last_hidden_state
        b = fused(input_ids=ids).last_hidden_state
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-4), (a - b).abs().max()
    assert (a - b).abs().max() < 1e-3 * a.abs().max()

    # optimize() runs the pass and reports it (the model's calibration error stays as before).
    opt = llmaccel.optimize(copy.deepcopy(model), quantize="int8", calibration=calib, attention=False)
    assert sum("activation=" in f for f in opt.llmaccel_report.fused) == 2
    assert "fused     : 2 activations" in str(opt.llmaccel_report)
