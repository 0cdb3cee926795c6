"""The README's sequence ``smooth_(model, ...)`` then ``quantize_(model, ...)`` applies the smoothing.

smooth_ records the scales it cannot fold into a norm on their Linears and
quantize_ picks them up without being handed ``report.smooth_scales``.
Checked on a BERT-like post-norm model (nothing can be folded there, so every
scale is an unfolded one) with activation outlier channels, against a
float64 copy of the float model.
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import llmaccel
from helpers import quiet_fallback_log, sqnr  # noqa: F401  (fixture used by _quiet_fallback_log)
from llmaccel import Int8Config, quantize_, smooth_


@pytest.fixture(autouse=True)
def _quiet_fallback_log(quiet_fallback_log):
    yield


class PostNormBlock(nn.Module):
    """BERT layout: the LayerNorm output feeds the next block's Linear *and* its residual (so nothing folds)."""

    def __init__(self, d):
        super().__init__()
        self.fc1, self.fc2, self.ln = nn.Linear(d, 4 * d), nn.Linear(4 * d, d), nn.LayerNorm(d)

    def forward(self, x):
        return self.ln(x + self.fc2(F.gelu(self.fc1(x))))


class TinyBert(nn.Module):
    def __init__(self, d=64, layers=3, classes=10, outlier_gain=100.0):
        super().__init__()
        self.blocks = nn.Sequential(*(PostNormBlock(d) for _ in range(layers)))
        self.classifier = nn.Linear(d, classes)
        with torch.no_grad():
            # Channels 0-2 carry outliers everywhere (LayerNorm gains here, the input in batches()), as in
            # trained transformers, whose weights read those channels with small coefficients.
            for blk in self.blocks:
                blk.ln.weight[:3] = outlier_gain
                blk.fc1.weight[:, :3] /= outlier_gain
            self.classifier.weight[:, :3] /= outlier_gain

    def forward(self, x):
        return self.classifier(self.blocks(x))


def batches(n, seed):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randn(4, 16, 64, generator=g)
        x[..., :3] *= 100.0  # outlier channels in the input too
        out.append(x)
    return out


def test_readme_sequence_applies_the_smoothing():
    torch.manual_seed(0)
    base = TinyBert()
    x = batches(1, seed=1)[0]
    with torch.no_grad():
        ref = copy.deepcopy(base).double()(x.double())

    plain = copy.deepcopy(base)
    quantize_(plain, Int8Config(act="dynamic"))

    model = copy.deepcopy(base)
    report = smooth_(model, batches(4, seed=2), alpha=0.5)
    # Post-norm: each norm output also feeds a residual, so only the last one (read by the head alone) folds.
    assert report.folded == {"blocks.2.ln": ["classifier"]} and len(report.smooth_scales) == 6
    assert "quantize_(model) applies them" in str(report)
    summary = quantize_(model, Int8Config(act="dynamic"))  # no smooth_scales= : the README's call
    assert summary.swapped == [f"blocks.{i}.{fc}" for i in range(3) for fc in ("fc1", "fc2")]
    assert all(r.smoothed for r in summary.layers)
    rows = [line for line in str(summary).splitlines() if line.strip().startswith("blocks.")]
    assert len(rows) == 6 and all(" yes " in row for row in rows), str(summary)
    assert all(model.blocks[i].fc1.smooth_scale is not None for i in range(3))

    with torch.no_grad():
        db_plain, db_smooth = sqnr(plain(x), ref), sqnr(model(x), ref)
    print(f"\nTinyBert with outlier channels, W8A8 logits: quantize_ {db_plain:.1f} dB, "
          f"smooth_ + quantize_ {db_smooth:.1f} dB")
    assert db_smooth >= db_plain + 6.0 and db_smooth >= 25.0


def test_recorded_scales_equal_explicit_ones_and_explicit_wins():
    torch.manual_seed(1)
    model = TinyBert(layers=2)
    report = smooth_(model, batches(2, seed=3))
    implicit, explicit = copy.deepcopy(model), copy.deepcopy(model)
    quantize_(implicit)
    quantize_(explicit, smooth_scales=report.smooth_scales)
    x = batches(1, seed=4)[0]
    with torch.no_grad():
        assert torch.equal(implicit(x), explicit(x))
    # An explicit scale overrides the recorded one for its layer only.
    other = copy.deepcopy(model)
    ones = torch.ones(64)
    summary = quantize_(other, smooth_scales={"blocks.0.fc1": ones})
    assert torch.equal(other.blocks[0].fc1.smooth_scale, ones)
    assert torch.equal(other.blocks[1].fc1.smooth_scale, report.smooth_scales["blocks.1.fc1"])
    assert all(r.smoothed for r in summary.layers)


def test_a_new_smooth_replaces_the_recorded_scales_and_state_dict_is_unchanged():
    torch.manual_seed(2)
    model = TinyBert(layers=1)
    keys = set(model.state_dict())
    first = smooth_(model, batches(2, seed=5), alpha=0.5)
    assert set(model.state_dict()) == keys  # recorded as plain attributes, not buffers
    second = smooth_(model, batches(2, seed=5), alpha=0.9)
    summary = quantize_(model)
    s = second.smooth_scales["blocks.0.fc2"]
    assert not torch.equal(s, first.smooth_scales["blocks.0.fc2"])
    assert torch.equal(model.blocks[0].fc2.smooth_scale, s)
    assert all(r.smoothed for r in summary.layers)


def test_skipped_layer_with_recorded_scale_is_reported():
    torch.manual_seed(3)
    model = TinyBert(layers=1)
    report = smooth_(model, batches(2, seed=6))
    assert "blocks.0.fc2" in report.smooth_scales
    summary = quantize_(model, filter_fn=lambda mod, fqn: fqn != "blocks.0.fc2")
    assert summary.swapped == ["blocks.0.fc1"]
    assert "smooth_scale is unused" in summary.skipped["blocks.0.fc2"]
