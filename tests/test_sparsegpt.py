"""SparseGPT N:M pruning (``llmaccel.sparsity.sparsegpt_prune``) and its use through ``SparseLinear`` /
``sparsify_``: a valid N:M mask, zeros where pruned, a lower output error on the calibration inputs than
Wanda and magnitude on correlated inputs, the partial last group, the statistics ``calibrate(gram=True)``
collects, and bad input."""

import pytest
import torch
from torch import nn

import llmaccel
from llmaccel.nn import SparseLinear
from llmaccel.sparsity import NMPackedWeight, calibrate, prune, sparsegpt_prune


def _correlated_inputs(tokens, K, seed=0):
    """Inputs with strongly correlated channels (what a transformer's hidden states look like to a Linear), so
    correcting the kept weights can take back much of what the dropped ones gave."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(K, K, generator=g) / K ** 0.5 + torch.eye(K)
    return (torch.randn(tokens, K // 4, generator=g) @ torch.randn(K // 4, K, generator=g)
            + 0.3 * torch.randn(tokens, K, generator=g)) @ mix


def _err(W, Wp, X):
    return float(((X @ (W - Wp).t()).norm() / (X @ W.t()).norm()))


@pytest.mark.parametrize("pattern", ["2:4", "4:8", "1:2"])
def test_mask_is_nm_and_error_beats_wanda_and_magnitude(pattern):
    n, m = map(int, pattern.split(":"))
    N, K = 24, 64
    W = torch.randn(N, K, generator=torch.Generator().manual_seed(1))
    X = _correlated_inputs(512, K)
    Wp, keep = sparsegpt_prune(W, X.double().t() @ X.double(), pattern)
    assert keep.dtype == torch.bool and keep.shape == W.shape and Wp.dtype == W.dtype
    assert bool((keep.reshape(N, K // m, m).sum(-1) == n).all())
    assert bool((Wp[~keep] == 0).all())
    wanda = W * prune(W, pattern, method="wanda", activation_norms=X.double().norm(dim=0))
    magnitude = W * prune(W, pattern)
    e_sgpt, e_wanda, e_mag = _err(W, Wp, X), _err(W, wanda, X), _err(W, magnitude, X)
    assert e_sgpt < 0.8 * e_wanda and e_sgpt < 0.8 * e_mag, (e_sgpt, e_wanda, e_mag)


def test_partial_last_group_dead_inputs_and_blocks():
    W = torch.randn(5, 19)
    X = _correlated_inputs(200, 20)[:, :19]
    X[:, 3] = 0.0  # a dead input: its column is pruned to 0 whatever the mask says
    G = X.double().t() @ X.double()
    for block in (4, 8, 128):
        Wp, keep = sparsegpt_prune(W, G, "2:4", block=block)
        assert bool((keep[:, :16].reshape(5, 4, 4).sum(-1) == 2).all())
        assert bool((keep[:, 16:].sum(-1) == 2).all())  # 3 columns keep ceil(2 * 3 / 4) = 2
        assert bool((Wp[:, 3] == 0).all()) and bool((Wp[~keep] == 0).all())
    # the packed layer holds exactly the corrected weight
    lin = nn.Linear(19, 5)
    sl = SparseLinear.from_linear(lin, "2:4", method="sparsegpt", activation_gram=G)
    want, _ = sparsegpt_prune(lin.weight, G, "2:4")
    assert torch.equal(sl.to_dense(), want.float())
    q = SparseLinear.from_linear(lin, "2:4", method="sparsegpt", activation_gram=G, quantize="int8")
    assert isinstance(q.weight_format(), NMPackedWeight) and q.weight_format().scale is not None


def test_calibrate_gram_and_sparsify_end_to_end():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32), nn.Linear(32, 4))
    batches = [_correlated_inputs(64, 32, seed=s).float() for s in range(3)]
    grams = calibrate(model, batches, gram=True)
    x_all = torch.cat(batches)
    assert torch.allclose(grams["0"], x_all.double().t() @ x_all.double())
    norms = calibrate(model, batches)
    assert torch.allclose(norms["0"], grams["0"].diagonal().sqrt())
    x = torch.cat(batches)
    with torch.no_grad():
        want = model(x)
    errors = {}
    for method in ("magnitude", "wanda", "sparsegpt"):
        m = torch.nn.Sequential(*[torch.nn.Linear(l.in_features, l.out_features) if isinstance(l, nn.Linear) else l
                                  for l in model])
        m.load_state_dict(model.state_dict())
        summary = llmaccel.sparsify_(m, llmaccel.SparsityConfig(method=method),
                                     calibration=None if method == "magnitude" else batches)
        assert summary.swapped == ["0", "2"]  # the head (last Linear) stays dense
        with torch.no_grad():
            errors[method] = float((m(x) - want).norm() / want.norm())
    assert errors["sparsegpt"] < errors["wanda"] and errors["sparsegpt"] < errors["magnitude"], errors


def test_bad_input():
    W, G = torch.randn(4, 8), torch.eye(8, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"gram must be X\^T X of shape \[K, K\] = \[8, 8\]"):
        sparsegpt_prune(W, torch.eye(7), "2:4")
    with pytest.raises(ValueError, match=r"gram holds NaN or inf"):
        sparsegpt_prune(W, G * float("nan"), "2:4")
    with pytest.raises(ValueError, match=r"damp must be in \(0, 1\)"):
        sparsegpt_prune(W, G, "2:4", damp=0.0)
    with pytest.raises(ValueError, match=r"pattern"):
        sparsegpt_prune(W, G, "unstructured")
    with pytest.raises(ValueError, match=r"method='sparsegpt' also updates the weights it keeps"):
        prune(W, "2:4", method="sparsegpt")
    lin = nn.Linear(8, 4)
    with pytest.raises(ValueError, match=r"method='sparsegpt' needs activation_gram"):
        SparseLinear.from_linear(lin, "2:4", method="sparsegpt")
    with pytest.raises(ValueError, match=r"method='sparsegpt' takes an N:M pattern"):
        SparseLinear.from_linear(lin, "unstructured", sparsity=0.5, method="sparsegpt", activation_gram=G)
    with pytest.raises(ValueError, match=r"activation_gram is only used by method='sparsegpt'"):
        SparseLinear.from_linear(lin, "2:4", activation_gram=G)
    with pytest.raises(ValueError, match=r"SparsityConfig: method='sparsegpt' takes an N:M pattern"):
        llmaccel.SparsityConfig(pattern="block", sparsity=0.5, method="sparsegpt")
    with pytest.raises(ValueError, match=r"sparsify_: method='sparsegpt' needs calibration"):
        llmaccel.sparsify_(nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 2)), llmaccel.SparsityConfig(method="sparsegpt"))
