"""optimize's measured choices: SmoothQuant's alpha picked by the calibration error (llmaccel._smooth_search)."""

import copy

import pytest
import torch
from torch import nn

import llmaccel
from llmaccel import _smooth_search
from llmaccel.nn import Int8Linear


def _encoder(seed=0):
    torch.manual_seed(seed)
    layer = nn.TransformerEncoderLayer(64, 4, 128, dropout=0.0, batch_first=True)
    model = nn.Sequential(nn.Linear(32, 64), nn.LayerNorm(64), layer, nn.Linear(64, 16)).eval()
    with torch.no_grad():  # outlier input channels, the case SmoothQuant is for
        model[0].weight[:, :3] *= 30
    return model


def _calib():
    g = torch.Generator().manual_seed(3)
    return [torch.randn(4, 9, 32, generator=g) for _ in range(2)]


def test_choose_alpha_takes_the_smallest_error_and_the_earlier_on_ties():
    seen = []

    def apply(m, alpha):
        seen.append(alpha)

    errs = {None: 0.3, 0.3: 0.2, 0.5: 0.1, 0.7: 0.1, 0.85: 0.4}
    it = iter(_smooth_search.CANDIDATES)
    alpha, errors, note = _smooth_search.choose_alpha(nn.Linear(2, 2), apply,
                                                      lambda m: {"relative_l2": errs[next(it)]}, 10)
    assert seen == list(_smooth_search.CANDIDATES)
    assert alpha == 0.5 and set(errors) == set(_smooth_search.CANDIDATES)
    assert "alpha 0.5" in note and "0.85: 0.4" in note


def test_auto_alpha_is_the_measured_best_and_is_what_the_model_runs():
    calib = _calib()
    auto = llmaccel.optimize(_encoder(), quantize="int8", calibration=calib)
    rep = auto.llmaccel_report
    assert "smallest calibration error" in rep.smooth_choice
    # Every candidate given explicitly: the auto choice has the smallest error among them, and equals
    # the explicit run of the alpha it chose.
    errors = {}
    for a in _smooth_search.CANDIDATES:
        m = llmaccel.optimize(_encoder(), quantize="int8", calibration=calib, smooth_alpha=a)
        errors[a] = m.llmaccel_report.calibration_error["relative_l2"]
    chosen = None if rep.smooth is None else rep.smooth.alpha
    assert errors[chosen] == pytest.approx(min(errors.values()), rel=1e-12)
    assert rep.calibration_error["relative_l2"] == pytest.approx(errors[chosen], rel=1e-12)


def test_explicit_and_no_smoothing_and_bad_values():
    calib = _calib()
    m = llmaccel.optimize(_encoder(), quantize="int8", calibration=calib, smooth_alpha=0.7)
    assert m.llmaccel_report.smooth.alpha == 0.7 and "given" in m.llmaccel_report.smooth_choice
    m = llmaccel.optimize(_encoder(), quantize="int8", calibration=calib, smooth_alpha=None)
    assert m.llmaccel_report.smooth is None
    assert all(q.smooth_scale is None for q in m.modules() if isinstance(q, Int8Linear))
    for bad in (1.5, -0.1, "high", True):
        with pytest.raises(ValueError, match="smooth_alpha"):
            llmaccel.optimize(_encoder(), quantize="int8", calibration=calib, smooth_alpha=bad)


def test_search_is_skipped_for_models_too_big_to_copy(monkeypatch):
    monkeypatch.setattr(_smooth_search, "MAX_SEARCH_BYTES", 0)
    m = llmaccel.optimize(_encoder(), quantize="int8", calibration=_calib())
    assert m.llmaccel_report.smooth.alpha == _smooth_search.DEFAULT_ALPHA
    assert "no search" in m.llmaccel_report.smooth_choice
