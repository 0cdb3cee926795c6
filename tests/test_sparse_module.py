"""llmaccel.nn.SparseLinear: from_linear for every pattern, the pruned-dense math, checkpoints (torch.load
weights_only and safetensors), corrupt / mismatched states, fine-tuning, bad input."""

import io

import pytest
import torch
from torch import nn

from llmaccel.nn import SparseLinear
from llmaccel.sparsity import prune

safetensors_torch = pytest.importorskip("safetensors.torch")

PATTERNS = [("2:4", {}), ("4:8", {}), ("unstructured", {"sparsity": 0.6}),
            ("block", {"sparsity": 0.5, "block_size": (4, 8)})]


def _linear(k=113, n=17, bias=True):
    lin = nn.Linear(k, n, bias=bias)
    with torch.no_grad():
        lin.weight.normal_()
    return lin


@pytest.mark.parametrize("pattern, kw", PATTERNS)
@pytest.mark.parametrize("quantize", [None, "int8"])
def test_from_linear_is_the_pruned_dense_layer(pattern, kw, quantize):
    lin = _linear()
    mask = prune(lin.weight, pattern, **kw)
    m = SparseLinear.from_linear(lin, pattern, quantize=quantize, **kw)
    dense = m.to_dense()
    pruned = torch.where(mask, lin.weight.detach(), 0.0)
    if quantize is None:
        assert torch.equal(dense, pruned)
    else:
        assert bool(((dense - pruned).abs() <= m.scale.unsqueeze(1) / 2 + 1e-12).all())
        assert bool((dense[~mask] == 0).all())
    for lead in ((1,), (3,), (2, 5)):
        x = torch.randn(*lead, 113)
        ref = x.double() @ dense.double().t() + lin.bias.double()
        y = m(x)
        assert y.shape == (*lead, 17)
        assert torch.allclose(y.double(), ref, rtol=1e-5, atol=1e-4), (pattern, quantize, lead)
    assert m.weight_bytes() < lin.weight.numel() * 4 or pattern == "block"
    assert "in_features=113" in repr(m) and ("int8" in repr(m)) == (quantize == "int8")


def test_weight_bytes_2_4_fp32_is_about_half_of_dense():
    m = SparseLinear.from_linear(_linear(256, 64), "2:4")
    assert m.weight_bytes() == 64 * 128 * 4 + 64 * 32
    assert m.weight_bytes() <= 0.54 * 64 * 256 * 4
    assert abs(m.sparsity() - 0.5) < 0.01


def test_wanda_uses_activation_norms():
    lin = _linear(16, 4)
    norms = torch.ones(16)
    norms[0] = 1e6  # column 0 matters most: Wanda keeps it in every row
    m = SparseLinear.from_linear(lin, "2:4", method="wanda", activation_norms=norms)
    assert bool((m.to_dense()[:, 0] != 0).all())


@pytest.mark.parametrize("pattern, kw", PATTERNS)
@pytest.mark.parametrize("quantize", [None, "int8"])
def test_state_dict_round_trips_through_torch_load_and_safetensors(tmp_path, pattern, kw, quantize):
    m = SparseLinear.from_linear(_linear(), pattern, quantize=quantize, **kw)
    sd = m.state_dict()
    assert all(isinstance(v, torch.Tensor) for v in sd.values())
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    path = tmp_path / "sparse.safetensors"
    safetensors_torch.save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    x = torch.randn(3, 113)
    for state in (loaded, safetensors_torch.load_file(str(path))):
        fresh = SparseLinear(113, 17, pattern=pattern, quantize=quantize, **kw)
        fresh.load_state_dict(state)
        assert torch.equal(fresh.to_dense(), m.to_dense())
        assert torch.equal(fresh(x), m(x))


def test_corrupt_or_mismatched_state_raises_and_leaves_the_layer_unchanged():
    m = SparseLinear.from_linear(_linear(), "2:4")
    good = m.state_dict()
    fresh = SparseLinear(113, 17)
    before = fresh.to_dense().clone()

    def bad(**change):
        sd = dict(good)
        sd.update(change)
        return sd

    idx = good["indices"].clone()
    idx[0, 0] = 0  # two slots on one column
    cases = [
        (bad(indices=idx), r"strictly increasing"),
        (bad(values=good["values"][:, :-1]), r"values"),
        (bad(shape=torch.tensor([17, 112])), r"(shape|values)"),
        (bad(bias=torch.full((17,), float("nan"))), r"bias.*NaN"),
        (bad(values=torch.full_like(good["values"], float("inf"))), r"NaN or inf"),
    ]
    for sd, match in cases:
        with pytest.raises(RuntimeError, match=match):
            fresh.load_state_dict(sd)
        assert torch.equal(fresh.to_dense(), before)
    with pytest.raises(RuntimeError, match=r"Missing key.*indices"):
        fresh.load_state_dict({k: v for k, v in good.items() if k != "indices"})
    with pytest.raises(RuntimeError, match=r"'nm' weight.*'bitmap'"):
        SparseLinear(113, 17, pattern="unstructured", sparsity=0.5).load_state_dict(good)
    with pytest.raises(RuntimeError, match=r"expected \[out_features, in_features\] = \[17, 112\]"):
        SparseLinear(112, 17).load_state_dict(good)


def test_fine_tuning_keeps_the_mask():
    torch.manual_seed(0)
    m = SparseLinear.from_linear(_linear(64, 16), "2:4")
    mask = m.to_dense() != 0
    target = torch.where(mask, torch.randn(16, 64), 0.0)
    opt = torch.optim.SGD(m.parameters(), lr=1.0)
    losses = []
    for _ in range(15):
        x = torch.randn(32, 64)
        loss = (m(x) - x @ target.t()).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0], losses
    assert bool((m.to_dense()[~mask] == 0).all())


def test_half_keeps_the_int8_scale_fp32():
    m = SparseLinear.from_linear(_linear(), "2:4", quantize="int8").half()
    assert m.scale.dtype == torch.float32 and m.values.dtype == torch.int8 and m.bias.dtype == torch.float16
    y = m(torch.randn(2, 113).half())
    assert y.dtype == torch.float16


def test_bad_input_raises_clear_errors():
    with pytest.raises(TypeError, match=r"SparseLinear.from_linear expects an nn.Linear"):
        SparseLinear.from_linear(nn.Conv1d(2, 2, 1))
    with pytest.raises(ValueError, match=r"pattern"):
        SparseLinear.from_linear(_linear(), "3:3")
    with pytest.raises(ValueError, match=r"sparsity must be a float in \(0, 1\)"):
        SparseLinear.from_linear(_linear(), "unstructured", sparsity=1.5)
    with pytest.raises(ValueError, match=r"quantize must be None or 'int8'"):
        SparseLinear.from_linear(_linear(), "2:4", quantize="int4")
    with pytest.raises(ValueError, match=r"in_features=113"):
        SparseLinear.from_linear(_linear(), "2:4")(torch.randn(2, 112))
