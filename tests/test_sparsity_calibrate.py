"""llmaccel.sparsity.calibrate: per-input-channel L2 norms of every nn.Linear's input, hooks always removed."""

import pytest
import torch
from torch import nn

from llmaccel.sparsity import calibrate, prune


class Net(nn.Module):
    """fc1 -> GELU -> dropout -> fc2, a shared Linear called twice, and a Linear nobody calls."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(7, 13)
        self.drop = nn.Dropout(0.5)
        self.fc2 = nn.Linear(13, 5)
        self.shared = nn.Linear(5, 5)
        self.unused = nn.Linear(3, 3)

    def forward(self, x):
        h = self.fc2(self.drop(torch.nn.functional.gelu(self.fc1(x))))
        return self.shared(input=self.shared(h))       # keyword input: the pre-hook must see it too


def reference_norms(model, batches):
    """The same sums, by hand: every layer's inputs over all tokens of all batches, float64."""
    sums = {}
    with torch.no_grad():
        for x in batches:
            h1 = torch.nn.functional.gelu(model.fc1(x))
            h2 = model.fc2(h1)
            h3 = model.shared(h2)
            for name, t in (("fc1", [x]), ("fc2", [h1]), ("shared", [h2, h3])):
                for u in t:
                    s = u.double().reshape(-1, u.shape[-1]).pow(2).sum(0)
                    sums[name] = sums.get(name, 0) + s
    return {k: v.sqrt() for k, v in sums.items()}


def batches_of(shapes, dtype=torch.float32):
    return [(torch.randn(s) * torch.linspace(0.1, 30, 7)).to(dtype) for s in shapes]


def test_norms_match_the_hand_computed_sums_and_skip_unreached_linears():
    model = Net().train()
    batches = batches_of([(3, 7), (2, 5, 7), (1, 1, 7), (17, 7)])
    norms = calibrate(model, batches)
    assert set(norms) == {"fc1", "fc2", "shared"}       # "unused" saw no input
    ref = reference_norms(model, batches)
    for name, a in norms.items():
        assert a.dtype == torch.float64 and a.shape == ref[name].shape
        torch.testing.assert_close(a, ref[name], rtol=1e-13, atol=0)
    assert model.training and model.drop.training       # eval() during calibration (no dropout), flags restored


def test_batch_order_does_not_matter():
    model = Net()
    batches = batches_of([(3, 7), (2, 5, 7), (113, 7), (1, 7)])
    a = calibrate(model, batches)
    b = calibrate(model, batches[::-1])
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-14, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs_accumulate_in_float64(dtype):
    lin = nn.Linear(7, 3).to(dtype)
    xs = batches_of([(4099, 7)], dtype)
    norms = calibrate(nn.Sequential(lin), xs)
    torch.testing.assert_close(norms["0"], xs[0].double().pow(2).sum(0).sqrt(), rtol=1e-15, atol=0)


def test_forward_fn_for_dict_batches():
    model = Net()
    batches = batches_of([(3, 7), (4, 7)])
    norms = calibrate(model, [{"x": b} for b in batches], forward_fn=lambda m, b: m(**b))
    torch.testing.assert_close(norms["fc1"], reference_norms(model, batches)["fc1"], rtol=1e-13, atol=0)


def test_hooks_removed_and_flags_restored_when_a_batch_raises():
    model = Net().train()
    with pytest.raises(RuntimeError):
        calibrate(model, [torch.randn(2, 7), torch.randn(2, 8)])   # the second batch has the wrong width
    for m in model.modules():
        assert not m._forward_pre_hooks and m.training
    calibrate(model, [torch.randn(2, 7)])                         # and a later run starts from zero
    for m in model.modules():
        assert not m._forward_pre_hooks


def test_feeds_wanda_pruning():
    model = Net()
    x = torch.randn(64, 7)
    x[:, 2] *= 1000                                 # an outlier input channel of fc1
    with torch.no_grad():
        model.fc1.weight[:, 2] = 1e-3               # with small weights on it
    norms = calibrate(model, [x])
    wanda = prune(model.fc1.weight, "unstructured", sparsity=0.5, method="wanda", activation_norms=norms["fc1"])
    assert wanda[:, 2].all() and not prune(model.fc1.weight, "unstructured", sparsity=0.5)[:, 2].any()


def test_bad_input():
    with pytest.raises(TypeError, match="calibrate: model must be an nn.Module"):
        calibrate(lambda x: x, [torch.randn(2, 7)])
    with pytest.raises(ValueError, match="calibrate: model has no nn.Linear"):
        calibrate(nn.ReLU(), [torch.randn(2, 7)])
    with pytest.raises(ValueError, match="calibrate: batches yielded no batches"):
        calibrate(Net(), [])
    x = torch.randn(2, 7)
    x[1, 3] = torch.inf
    with pytest.raises(ValueError, match="the input of 'fc1' holds NaN or inf"):
        calibrate(nn.ModuleDict({"fc1": nn.Linear(7, 2)}), [x], forward_fn=lambda m, b: m["fc1"](b))
