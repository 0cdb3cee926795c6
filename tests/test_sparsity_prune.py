"""llmaccel.sparsity.prune against brute-force Python references: every pattern, method, odd shape, tie."""

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from llmaccel.sparsity import prune

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SHAPES = [(1, 1), (1, 3), (3, 17), (17, 113), (2, 4099)]
NM = [(2, 4), (1, 4), (4, 8), (1, 2), (3, 5), (7, 16)]


def weight(shape, dtype=torch.float32, ties=False):
    """Random non-zero weights; with ties, small integers so many |w| repeat (exercises the tie rule)."""
    if ties:
        w = torch.randint(1, 4, shape).float() * (torch.randint(0, 2, shape) * 2 - 1)
    else:
        w = torch.randn(shape) * torch.exp(torch.randn(shape))
        w = torch.where(w == 0, torch.ones_like(w), w)
    return w.to(dtype)


def ranked(scores, keep):
    """Indices of the `keep` highest scores, ties to the lower index (the documented rule)."""
    return set(sorted(range(len(scores)), key=lambda j: (-scores[j], j))[:keep])


def nm_reference(score, n, m):
    rows, k = score.shape
    out = torch.zeros(rows, k, dtype=torch.bool)
    s = score.tolist()
    for r in range(rows):
        for g0 in range(0, k, m):
            seg = s[r][g0:g0 + m]
            for j in ranked(seg, math.ceil(n * len(seg) / m)):
                out[r, g0 + j] = True
    return out


# ---------------------------------------------------------------- N:M

@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("n, m", NM)
def test_nm_matches_reference_and_group_counts(shape, n, m):
    w = weight(shape)
    mask = prune(w, f"{n}:{m}")
    assert mask.dtype == torch.bool and mask.shape == w.shape
    assert torch.equal(mask, nm_reference(w.double().abs(), n, m))
    rows, k = shape
    for g0 in range(0, k, m):  # N:M property per group: N kept, the tail ceil(N * L / M)
        length = min(m, k - g0)
        assert torch.all(mask[:, g0:g0 + m].sum(1) == math.ceil(n * length / m))


@pytest.mark.parametrize("dtype", DTYPES)
def test_2_4_keeps_the_two_largest_with_ties_to_the_lower_column(dtype):
    w = weight((17, 113), dtype, ties=True)
    mask = prune(w, "2:4")
    assert torch.equal(mask, nm_reference(w.double().abs(), 2, 4))
    full = w[:, :112].double().abs().view(17, 28, 4)
    kept = mask[:, :112].view(17, 28, 4)
    smallest_kept = torch.where(kept, full, torch.inf).amin(-1)
    largest_dropped = torch.where(kept, -torch.inf, full).amax(-1)
    assert torch.all(smallest_kept >= largest_dropped)


def test_nm_tail_lengths_at_k_4099():
    w = weight((3, 4099))
    for pattern, tail_keep in (("2:4", 2), ("1:4", 1), ("4:8", 2), ("2:8", 1), ("7:16", 2)):
        mask = prune(w, pattern)
        n, m = map(int, pattern.split(":"))
        tail = 4099 % m
        assert torch.all(mask[:, 4099 - tail:].sum(1) == tail_keep), pattern
        assert tail_keep == math.ceil(n * tail / m)


def test_all_equal_scores_keep_the_first_columns():
    mask = prune(torch.ones(2, 9), "2:4")
    assert mask[0].tolist() == [True, True, False, False] * 2 + [True]


# ---------------------------------------------------------------- unstructured

def unstructured_reference(score, sparsity):
    rows, k = score.shape
    total = math.floor(sparsity * rows * k + 0.5)
    base, extra = divmod(total, rows)
    out = torch.zeros(rows, k, dtype=torch.bool)
    for r in range(rows):
        for j in ranked(score[r].tolist(), k - base - (r < extra)):
            out[r, j] = True
    return out


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("sparsity", [0.1, 0.5, 0.7, 0.9, 0.33])
def test_unstructured_exact_count_and_ranking(shape, sparsity):
    w = weight(shape, ties=shape == (17, 113))
    mask = prune(w, "unstructured", sparsity=sparsity)
    rows, k = shape
    zeros = int((~mask).sum())
    assert zeros == math.floor(sparsity * rows * k + 0.5)
    per_row = (~mask).sum(1)
    assert int(per_row.max() - per_row.min()) <= 1 and torch.all(per_row[:-1] >= per_row[1:])
    if rows * k <= 20000:
        assert torch.equal(mask, unstructured_reference(w.double().abs(), sparsity))


def test_unstructured_half_rounds_up():
    # 0.5 * 3 * 5 = 7.5 -> 8 pruned (half up, not Python's half-to-even); rows get 3, 3, 2
    mask = prune(weight((3, 5)), "unstructured", sparsity=0.5)
    assert (~mask).sum(1).tolist() == [3, 3, 2]


# ---------------------------------------------------------------- block

def block_reference(score, sparsity, bh, bw):
    rows, k = score.shape
    tiles = []
    for i in range(0, rows, bh):
        for j in range(0, k, bw):
            t = score[i:i + bh, j:j + bw]
            tiles.append(((t * t).sum().item() / t.numel(), i, j))
    keep = len(tiles) - math.floor(sparsity * len(tiles) + 0.5)
    kept = ranked([s for s, _, _ in tiles], keep)
    out = torch.zeros(rows, k, dtype=torch.bool)
    for idx in kept:
        _, i, j = tiles[idx]
        out[i:i + bh, j:j + bw] = True
    return out


@pytest.mark.parametrize("shape, block", [((17, 113), (4, 8)), ((64, 96), (32, 32)), ((1, 3), (2, 2)),
                                          ((33, 65), (32, 32)), ((3, 17), (1, 16))])
@pytest.mark.parametrize("sparsity", [0.25, 0.5, 0.9])
def test_block_whole_tiles_and_reference(shape, block, sparsity):
    w = weight(shape)
    mask = prune(w, "block", sparsity=sparsity, block_size=block)
    assert torch.equal(mask, block_reference(w.double().abs(), sparsity, *block))
    bh, bw = block
    for i in range(0, shape[0], bh):  # every tile is all kept or all pruned
        for j in range(0, shape[1], bw):
            t = mask[i:i + bh, j:j + bw]
            assert bool(t.all()) or not bool(t.any())


def test_block_sparsity_exact_when_the_block_divides():
    mask = prune(weight((64, 96)), "block", sparsity=0.5, block_size=(16, 32))
    assert int((~mask).sum()) == 64 * 96 // 2


def test_block_edge_tile_competes_per_element():
    # A 1-column edge tile of large weights must outrank full tiles of small ones (not lose for being small).
    w = torch.full((4, 9), 0.01)
    w[:, 8] = 5.0
    mask = prune(w, "block", sparsity=0.5, block_size=(4, 4))  # 3 tiles, 2 pruned
    assert mask[:, 8].all() and not mask[:, :8].any()


# ---------------------------------------------------------------- Wanda

@pytest.mark.parametrize("pattern, kw", [("2:4", {}), ("unstructured", {"sparsity": 0.6}),
                                         ("block", {"sparsity": 0.5, "block_size": (4, 4)})])
def test_wanda_equals_magnitude_with_equal_norms(pattern, kw):
    w = weight((17, 113))
    a = torch.full((113,), 3.7)
    assert torch.equal(prune(w, pattern, method="wanda", activation_norms=a, **kw), prune(w, pattern, **kw))


@pytest.mark.parametrize("pattern, kw", [("2:4", {}), ("unstructured", {"sparsity": 0.5})])
def test_wanda_is_magnitude_of_w_times_norm(pattern, kw):
    w = weight((17, 113))
    a = torch.rand(113, dtype=torch.float64) * 10
    expect = prune(w.double() * a, pattern, **kw)
    assert torch.equal(prune(w, pattern, method="wanda", activation_norms=a, **kw), expect)


def test_wanda_keeps_small_weights_on_an_outlier_channel():
    w = weight((17, 113))
    w[:, 5] = 1e-3                          # tiny weights ...
    a = torch.ones(113)
    a[5] = 1e6                              # ... on the channel that carries the activation outliers
    magnitude = prune(w, "2:4")
    wanda = prune(w, "2:4", method="wanda", activation_norms=a)
    assert not magnitude[:, 5].any() and wanda[:, 5].all()
    assert not torch.equal(magnitude, wanda)


# ---------------------------------------------------------------- inputs

def test_views_and_extremes():
    w = weight((113, 17)).t()               # transposed view
    assert torch.equal(prune(w, "2:4"), prune(w.contiguous(), "2:4"))
    s = weight((40, 34))[::2, 1::2]         # strided view
    assert torch.equal(prune(s, "unstructured", sparsity=0.5), prune(s.contiguous(), "unstructured", sparsity=0.5))
    e = torch.tensor([[1e30, -0.0, 1e-45, 1e-40, -3e38, 2.0, -1e-38, 0.5]])
    assert prune(e, "2:4").tolist() == [[True, False, False, True, True, True, False, False]]
    assert not prune(e, "unstructured", sparsity=0.25)[0, 1]  # -0.0 and 1e-45 go first


def test_deterministic_and_leaves_the_weight_alone():
    w = weight((17, 113))
    before = w.clone()
    assert torch.equal(prune(w, "unstructured", sparsity=0.5), prune(w, "unstructured", sparsity=0.5))
    assert torch.equal(w, before)


@pytest.mark.parametrize("args, kwargs, match", [
    ((torch.ones(4, 8), "3:2"), {}, "1 <= N < M"),
    ((torch.ones(4, 8), "0:4"), {}, "1 <= N < M"),
    ((torch.ones(4, 8), "2:512"), {}, "M <= 256"),
    ((torch.ones(4, 8), "dense"), {}, "pattern must be"),
    ((torch.ones(4, 8), 24), {}, "pattern must be"),
    ((torch.ones(4, 8), "2:4"), {"sparsity": 0.5}, "fixes the sparsity"),
    ((torch.ones(4, 8), "unstructured"), {}, "needs sparsity"),
    ((torch.ones(4, 8), "unstructured"), {"sparsity": 1.0}, r"sparsity must be a float in \(0, 1\)"),
    ((torch.ones(4, 8), "unstructured"), {"sparsity": 0}, r"sparsity must be a float in \(0, 1\)"),
    ((torch.ones(4, 8), "unstructured"), {"sparsity": True}, "sparsity must be"),
    ((torch.ones(4, 8), "block"), {"sparsity": 0.5, "block_size": (0, 4)}, "block_size must be a pair"),
    ((torch.ones(4, 8), "block"), {"sparsity": 0.5, "block_size": 4}, "block_size must be a pair"),
    ((torch.ones(4, 8), "2:4"), {"method": "obs"}, "method must be one of"),
    ((torch.ones(4, 8), "2:4"), {"method": "sparsegpt"}, "also updates the weights it keeps"),
    ((torch.ones(4, 8), "2:4"), {"method": "wanda"}, "needs activation_norms"),
    ((torch.ones(4, 8), "2:4"), {"activation_norms": torch.ones(8)}, "only used by method='wanda'"),
    ((torch.ones(4, 8), "2:4"), {"method": "wanda", "activation_norms": torch.ones(7)}, r"shape \[in_features\]"),
    ((torch.ones(4, 8), "2:4"), {"method": "wanda", "activation_norms": -torch.ones(8)}, "finite and >= 0"),
    ((torch.ones(4, 8), "2:4"), {"method": "wanda", "activation_norms": torch.full((8,), torch.nan)},
     "finite and >= 0"),
    ((torch.ones(8), "2:4"), {}, "must be 2-D"),
    ((torch.ones(0, 8), "2:4"), {}, "must be 2-D"),
    ((torch.ones(4, 8, dtype=torch.int32), "2:4"), {}, "floating-point"),
    ((torch.full((4, 8), torch.inf), "2:4"), {}, "NaN or inf"),
])
def test_bad_input_names_the_argument(args, kwargs, match):
    with pytest.raises(ValueError, match=match) as info:
        prune(*args, **kwargs)
    assert "llmaccel.sparsity.prune" in str(info.value)


def test_non_tensor_weight():
    with pytest.raises(TypeError, match="weight must be a torch.Tensor"):
        prune([[1.0, 2.0]], "2:4")


# ---------------------------------------------------------------- properties

@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.integers(1, 9), k=st.integers(1, 70), m=st.integers(2, 16), data=st.data())
def test_nm_property(rows, k, m, data):
    n = data.draw(st.integers(1, m - 1))
    ties = data.draw(st.booleans())
    w = weight((rows, k), ties=ties)
    mask = prune(w, f"{n}:{m}")
    assert torch.equal(mask, nm_reference(w.double().abs(), n, m))


@settings(max_examples=40, deadline=None, derandomize=True)
@given(rows=st.integers(1, 9), k=st.integers(1, 70), sparsity=st.floats(0.01, 0.99))
def test_unstructured_property(rows, k, sparsity):
    mask = prune(weight((rows, k), ties=True), "unstructured", sparsity=sparsity)
    assert int((~mask).sum()) == math.floor(sparsity * rows * k + 0.5)
