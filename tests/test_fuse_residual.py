"""llmaccel._fuse_residual.fuse_residuals_: BERT's ``LayerNorm(dense(h) + h_in)`` with the add in the epilogue.

The fused module computes ``LayerNorm(int8_linear(h, residual=h_in))``, and int8_linear's residual is
bit-identical to the unfused fp32 add (tests/test_int8_linear_residual.py), so the fused int8 model must give
exactly the unfused int8 model's outputs.  In training mode with dropout the fused module runs the unfused
form (dropout sits between the Linear and the add).
"""

import copy
import io

import pytest
import torch
from torch import nn

import llmaccel
from llmaccel._fuse_residual import DenseAddNorm, fuse_residuals_

transformers = pytest.importorskip("transformers")


def _bert(layers=2, dropout=0.1):
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=64, num_hidden_layers=layers, num_attention_heads=4,
                                  intermediate_size=128, hidden_dropout_prob=dropout, attn_implementation="eager")
    torch.manual_seed(0)
    return transformers.BertModel(cfg).eval()


def _int8(model):
    m = copy.deepcopy(model)
    llmaccel.quantize_(m, llmaccel.Int8Config(act="dynamic"))
    return m


def test_small_bert_fused_is_bit_identical_to_unfused():
    unfused = _int8(_bert())
    fused = copy.deepcopy(unfused)
    names = fuse_residuals_(fused)
    assert sorted(names) == sorted(f"encoder.layer.{i}.{part}: dense + residual add -> residual epilogue ({cls})"
                                   for i in range(2) for part, cls in (("attention.output", "BertSelfOutput"),
                                                                       ("output", "BertOutput")))
    for layer in fused.encoder.layer:
        assert type(layer.attention.output) is DenseAddNorm and type(layer.output) is DenseAddNorm
    assert fused.state_dict().keys() == unfused.state_dict().keys()
    ids = torch.randint(1, 100, (3, 19))
    mask = torch.ones(3, 19, dtype=torch.long)
    mask[2, 5:] = 0
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            a = unfused(input_ids=ids, attention_mask=mask).last_hidden_state
            b = fused(input_ids=ids, attention_mask=mask).last_hidden_state
        assert torch.equal(a, b), (grad, (a - b).abs().max())
    assert fuse_residuals_(fused) == []  # already fused: nothing left
    # the whole model pickles (DenseAddNorm is a module-level class) and a state_dict loads across
    buf = io.BytesIO()
    torch.save(fused, buf)
    buf.seek(0)
    again = torch.load(buf, weights_only=False)
    with torch.inference_mode():
        assert torch.equal(again(input_ids=ids).last_hidden_state, fused(input_ids=ids).last_hidden_state)
    unfused.load_state_dict(fused.state_dict())


def test_training_with_dropout_runs_the_unfused_form():
    unfused = _int8(_bert(dropout=0.3)).train()
    fused = copy.deepcopy(unfused)
    fuse_residuals_(fused)
    assert fused.training and all(m.training for m in fused.modules())
    ids = torch.randint(1, 100, (2, 11))
    torch.manual_seed(5)
    a = unfused(input_ids=ids).last_hidden_state
    torch.manual_seed(5)
    b = fused(input_ids=ids).last_hidden_state
    assert torch.equal(a, b)
    b.sum().backward()  # gradients reach the trainable LayerNorm through the fused module too
    assert fused.encoder.layer[0].output.LayerNorm.weight.grad is not None


def test_only_provable_modules_are_fused():
    base = _bert(layers=1)
    weight_only = copy.deepcopy(base)
    llmaccel.quantize_(weight_only, llmaccel.Int8Config(act="weight_only"))
    hooked = _int8(base)
    hooked.encoder.layer[0].output.dense.register_forward_hook(lambda *a: None)
    hooked.encoder.layer[0].attention.output.register_forward_pre_hook(lambda *a: None)

    class MyOutput(transformers.models.bert.modeling_bert.BertOutput):
        def forward(self, hidden_states, input_tensor):  # other math: must not be fused
            return self.LayerNorm(self.dense(hidden_states) - input_tensor)

    subclass = _int8(base)
    out = subclass.encoder.layer[0].output
    mine = MyOutput(base.config)
    mine.dense, mine.LayerNorm, mine.dropout = out.dense, out.LayerNorm, out.dropout
    subclass.encoder.layer[0].output = mine
    fuse_residuals_(subclass)
    assert type(subclass.encoder.layer[0].output) is MyOutput
    assert type(subclass.encoder.layer[0].attention.output) is DenseAddNorm
    for m in (base, weight_only):
        assert fuse_residuals_(m) == []
    assert fuse_residuals_(hooked) == []
    with pytest.raises(TypeError, match="fuse_residuals_: model must be an nn.Module"):
        fuse_residuals_("model")


def test_optimize_reports_and_compiles_the_fused_model():
    model = _bert()
    ids = torch.randint(1, 100, (2, 13))
    opt = llmaccel.optimize(copy.deepcopy(model), quantize="int8", calibration=[{"input_ids": ids}])
    rep = opt.llmaccel_report
    assert sum("residual" in f for f in rep.fused) == 4
    assert "2 activations and 4 residual adds" in str(rep)
    compiled = torch.compile(copy.deepcopy(opt), fullgraph=True)
    with torch.inference_mode():
        want = opt(input_ids=ids).last_hidden_state
        got = compiled(input_ids=ids).last_hidden_state
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5), (got - want).abs().max()
