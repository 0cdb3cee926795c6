"""How ``quantize_`` recognizes output heads (kept in float by default), and ``filter_fn``."""

import pytest
import torch
from torch import nn

import llmaccel
from llmaccel import Int8Config, Int8Linear, quantize_


def kinds(model):
    return {fqn: type(m).__name__ for fqn, m in model.named_modules() if isinstance(m, (nn.Linear, Int8Linear))}


@pytest.mark.parametrize("model, head", [
    (lambda: nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)), "2"),
    (lambda: nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4), nn.Dropout(0.1), nn.Softmax(-1)), "2"),
    (lambda: nn.Sequential(nn.Sequential(nn.Linear(16, 32), nn.ReLU()), nn.Sequential(nn.Linear(32, 4),
                                                                                      nn.Identity())), "1.0"),
])
def test_last_linear_of_a_sequential_model_is_the_head(model, head):
    m = model()
    x = torch.randn(3, 16)
    with torch.no_grad():
        ref = m(x)
    summary = quantize_(m)
    assert head in summary.skipped and "output head" in summary.skipped[head]
    assert kinds(m)[head] == "Linear" and len(summary.swapped) == 1
    with torch.no_grad():
        y = m(x)
    assert ((y - ref).norm() / ref.norm()).item() < 0.05
    m2 = model()
    assert head in quantize_(m2, Int8Config(skip_output_head=False)).swapped


def test_sequential_ending_in_a_norm_has_no_linear_head():
    m = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 16), nn.LayerNorm(16))
    assert quantize_(m).swapped == ["0", "2"]


def test_named_top_level_heads_and_tied_heads():
    for name in llmaccel.quantize.OUTPUT_HEAD_NAMES:
        m = nn.Module()
        m.body = nn.Linear(16, 16)
        setattr(m, name, nn.Linear(16, 8))
        summary = quantize_(m)
        assert summary.swapped == ["body"] and f"top-level '{name}'" in summary.skipped[name]
    nested = nn.Module()
    nested.decoder = nn.Module()
    nested.decoder.output = nn.Linear(16, 8)  # not top level: quantized
    assert quantize_(nested).swapped == ["decoder.output"]
    tied = nn.Module()
    tied.embed = nn.Embedding(10, 16)
    tied.proj = nn.Linear(16, 10, bias=False)
    tied.proj.weight = tied.embed.weight
    assert "tied to nn.Embedding 'embed'" in quantize_(tied).skipped["proj"]


def test_filter_fn_keeps_an_unrecognized_head_in_float():
    class Classifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 64))
            self.proj = nn.Linear(64, 100)

        def forward(self, x):
            return self.proj(self.encoder(x))

    m = Classifier()
    assert "proj" in quantize_(Classifier()).swapped  # not a recognized head: quantized by default
    seen = []

    def keep_head(module, fqn):
        seen.append((fqn, type(module)))
        return fqn != "proj"

    summary = quantize_(m, filter_fn=keep_head)
    assert seen == [("encoder.0", nn.Linear), ("encoder.2", nn.Linear), ("proj", nn.Linear)]
    assert summary.swapped == ["encoder.0", "encoder.2"] and summary.skipped == {"proj": "filter_fn returned False"}
    assert kinds(m) == {"encoder.0": "Int8Linear", "encoder.2": "Int8Linear", "proj": "Linear"}
