"""llmaccel.sparsify_ on small transformer-like models: the pruned-dense math, the summary, filter_fn and
output heads, Wanda calibration, torch's encoder fast path kept off, and the order with quantize_."""

import copy
import warnings

import pytest
import torch
from torch import nn

import llmaccel
from llmaccel.nn import Int8Linear, SparseLinear

E, V = 64, 50


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(E)
        self.qkv = nn.Linear(E, 3 * E)
        self.proj = nn.Linear(E, E)
        self.up = nn.Linear(E, 4 * E)
        self.down = nn.Linear(4 * E, E)

    def forward(self, x):
        q, k, v = self.qkv(self.norm(x)).chunk(3, dim=-1)
        a = torch.softmax(q @ k.transpose(-1, -2) / E ** 0.5, dim=-1) @ v
        x = x + self.proj(a)
        return x + self.down(torch.relu(self.up(x)))


class TinyLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(V, E)
        self.blocks = nn.ModuleList([Block(), Block()])
        self.head = nn.Linear(E, V, bias=False)   # a name sparsify_ does not know: skipped because it is tied
        self.head.weight = self.embed.weight

    def forward(self, ids):
        x = self.embed(ids)
        for b in self.blocks:
            x = b(x)
        return self.head(x)


def _pruned_dense_reference(model):
    """A float64 copy in which every SparseLinear is an nn.Linear holding its pruned dense weight."""
    ref = copy.deepcopy(model)
    for name, mod in list(ref.named_modules()):
        for attr, child in list(mod._modules.items()):
            if isinstance(child, SparseLinear):
                lin = nn.Linear(child.in_features, child.out_features, bias=child.bias is not None)
                with torch.no_grad():
                    lin.weight.copy_(child.to_dense())
                    if child.bias is not None:
                        lin.bias.copy_(child.bias)
                setattr(mod, attr, lin)
    return ref.double()


@pytest.mark.parametrize("config", [
    llmaccel.SparsityConfig(),
    llmaccel.SparsityConfig(pattern="4:8", quantize="int8"),
    llmaccel.SparsityConfig(pattern="unstructured", sparsity=0.7),
    llmaccel.SparsityConfig(pattern="block", sparsity=0.5, block_size=(16, 16)),
])
def test_sparsify_matches_the_pruned_dense_model(config):
    torch.manual_seed(0)
    model = TinyLM().eval()
    dense = copy.deepcopy(model)
    ids = torch.randint(0, V, (2, 9))
    summary = llmaccel.sparsify_(model, config)
    assert len(summary.swapped) == 8 and all(isinstance(m, SparseLinear) for n, m in model.named_modules()
                                             if n.endswith(("qkv", "proj", "up", "down")))
    assert "tied to nn.Embedding 'embed'" in summary.skipped["head"]
    assert type(model.head) is nn.Linear and model.head.weight is model.embed.weight
    want = {"2:4": 0.5, "4:8": 0.5, "unstructured": 0.7, "block": 0.5}[config.pattern]
    assert abs(summary.sparsity - want) < 0.02, summary
    assert summary.bytes_saved > 0 and "sparsify_: 8 nn.Linear -> SparseLinear" in str(summary)
    ref = _pruned_dense_reference(model)
    with torch.no_grad():
        y, y64 = model(ids), ref(ids)
    assert torch.allclose(y.double(), y64, rtol=1e-4, atol=1e-4 * y64.abs().max())
    with torch.no_grad():
        assert not torch.allclose(y, dense(ids), atol=1e-3)  # pruning did change the model


def test_filter_fn_and_heads_are_respected():
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    seen = []
    summary = llmaccel.sparsify_(model, filter_fn=lambda m, fqn: seen.append(fqn) or fqn != "2")
    assert seen == ["0", "2", "4"]
    assert summary.swapped == ["0"]
    assert summary.skipped["2"] == "filter_fn returned False" and "output head" in summary.skipped["4"]
    assert isinstance(model[0], SparseLinear) and type(model[2]) is nn.Linear and type(model[4]) is nn.Linear


def test_wanda_calibration_runs_and_differs_from_magnitude():
    torch.manual_seed(0)
    model = TinyLM()
    batches = [torch.randint(0, V, (2, 9)) for _ in range(3)]
    mag, wanda = copy.deepcopy(model), copy.deepcopy(model)
    llmaccel.sparsify_(mag)
    summary = llmaccel.sparsify_(wanda, llmaccel.SparsityConfig(method="wanda", calibration=batches))
    assert len(summary.swapped) == 8
    assert not torch.equal(mag.blocks[0].up.to_dense() != 0, wanda.blocks[0].up.to_dense() != 0)
    again = copy.deepcopy(model)
    llmaccel.sparsify_(again, llmaccel.SparsityConfig(method="wanda"), calibration=batches)  # the argument form
    assert torch.equal(again.blocks[0].up.to_dense(), wanda.blocks[0].up.to_dense())
    with pytest.raises(ValueError, match=r"sparsify_: method='wanda' needs calibration"):
        llmaccel.sparsify_(copy.deepcopy(model), llmaccel.SparsityConfig(method="wanda"))
    with pytest.raises(ValueError, match=r"calibration is only used by method='wanda'"):
        llmaccel.sparsify_(copy.deepcopy(model), calibration=batches)


def test_encoder_layer_fast_path_is_kept_off():
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore")
        layer = nn.TransformerEncoderLayer(E, 4, 128, batch_first=True, dropout=0.0).eval()
    summary = llmaccel.sparsify_(layer)
    assert set(summary.swapped) == {"linear1", "linear2"} and "self_attn.out_proj" in summary.skipped
    x = torch.randn(2, 5, E)
    ref = _pruned_dense_reference(layer)
    with torch.no_grad():
        y = layer(x)
    with torch.inference_mode():
        y2 = layer(x)
    with torch.no_grad():
        y64 = ref(x.double())
    assert torch.allclose(y.double(), y64, atol=1e-4) and torch.equal(y, y2)


def test_sparsify_then_quantize_is_supported_and_the_other_order_raises():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8))
    llmaccel.sparsify_(model, llmaccel.SparsityConfig(quantize="int8"), filter_fn=lambda m, fqn: fqn == "0")
    q = llmaccel.quantize_(model)
    assert q.swapped == ["2"] and isinstance(model[0], SparseLinear) and isinstance(model[2], Int8Linear)
    x = torch.randn(4, 32)
    with torch.no_grad():
        y = model(x)
        h = torch.relu(x @ model[0].to_dense().t() + model[0].bias)
        h = torch.relu(h @ model[2].dequantize().t() + model[2].bias)
        ref = model[4](h)
    assert torch.allclose(y, ref, rtol=0.05, atol=0.05 * ref.abs().max())
    other = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8))
    llmaccel.quantize_(other)
    with pytest.raises(ValueError, match=r"sparsify_: the model already holds Int8Linear.*before quantize_"):
        llmaccel.sparsify_(other)


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"SparsityConfig: pattern"):
        llmaccel.SparsityConfig(pattern="2:2")
    with pytest.raises(ValueError, match=r"needs sparsity, a float in \(0, 1\)"):
        llmaccel.SparsityConfig(pattern="unstructured", sparsity=1.0)
    with pytest.raises(ValueError, match=r"fixes the sparsity"):
        llmaccel.SparsityConfig(pattern="2:4", sparsity=0.5)
    with pytest.raises(TypeError, match=r"sparsify_: config must be a SparsityConfig"):
        llmaccel.sparsify_(TinyLM(), llmaccel.Int8Config())
    with pytest.raises(TypeError, match=r"cannot replace the model object itself"):
        llmaccel.sparsify_(nn.Linear(4, 4))


@pytest.mark.parametrize("config", [llmaccel.SparsityConfig(pattern="unstructured", sparsity=0.7, quantize="int8"),
                                    llmaccel.SparsityConfig(pattern="block", sparsity=0.5, block_size=(16, 16))])
def test_a_sparsified_checkpoint_loads_into_another_sparsified_model(tmp_path, config):
    """The nnz of bitmap / BSR weights differs between models: loading resizes the layers' tensors."""
    torch.manual_seed(0)
    a = TinyLM().eval()
    llmaccel.sparsify_(a, config)
    torch.save(a.state_dict(), tmp_path / "a.pt")
    torch.manual_seed(1)
    b = TinyLM().eval()
    llmaccel.sparsify_(b, config)
    ids = torch.randint(0, V, (2, 9))
    with torch.no_grad():
        assert not torch.equal(a(ids), b(ids))
        b.load_state_dict(torch.load(tmp_path / "a.pt", weights_only=True))
        assert torch.equal(a(ids), b(ids))
