"""llmaccel.nn.MultiheadAttention (drop-in for torch.nn.MultiheadAttention) and CachedAttention / KVCache.

MultiheadAttention is checked against torch's module with identical weights:
in float64 (where both run the same math: tight), and llmaccel in float32
against torch in float64 (the fused op's accuracy), outputs, returned
attention weights and gradients of inputs, masks and parameters, over the
constructor options x mask kinds x need_weights.
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import llmaccel.nn.attention as attn_mod
from llmaccel.nn import CachedAttention, KVCache, MultiheadAttention

E, H = 16, 4

# name -> constructor kwargs (besides embed_dim, num_heads, batch_first)
CONFIGS = {
    "default": {},
    "no_bias": {"bias": False},
    "bias_kv": {"add_bias_kv": True},
    "zero_attn": {"add_zero_attn": True},
    "bias_kv_zero_attn": {"add_bias_kv": True, "add_zero_attn": True},
    "kdim_vdim": {"kdim": 12, "vdim": 10},
}


def _pair(cfg, batch_first, dtype=torch.float64, dropout=0.0):
    """(torch module, llmaccel module) with identical weights; the torch one in ``dtype``."""
    ref = nn.MultiheadAttention(E, H, dropout=dropout, batch_first=batch_first, dtype=dtype, **cfg)
    with torch.no_grad():  # non-zero biases, so every parameter matters
        for p in ref.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return ref, MultiheadAttention.from_torch(ref)


def _inputs(cfg, batch_first, self_attn, N=2, L=5, S=7):
    kdim, vdim = cfg.get("kdim", E), cfg.get("vdim", E)
    if self_attn:
        x = torch.randn(N, L, E, dtype=torch.float64)
        q = k = v = x
        S = L
    else:
        q = torch.randn(N, L, E, dtype=torch.float64)
        k = torch.randn(N, S, kdim, dtype=torch.float64)
        v = torch.randn(N, S, vdim, dtype=torch.float64)
    if not batch_first:
        q, k, v = (t.transpose(0, 1).contiguous() for t in (q, k, v))
    return q, k, v, N, L, S


def _masks(kind, N, L, S):
    """(key_padding_mask, attn_mask, is_causal), torch MHA convention (bool True = blocked); no row fully blocked."""
    kpm_bool = torch.zeros(N, S, dtype=torch.bool)
    kpm_bool[1, -2:] = True
    blocked2 = torch.rand(L, S) > 0.6
    blocked2[:, 0] = False
    blocked3 = torch.rand(N * H, L, S) > 0.6
    blocked3[:, :, 0] = False
    causal = torch.ones(L, S, dtype=torch.bool).triu(1)
    return {
        "none": (None, None, False),
        "kpm_bool": (kpm_bool, None, False),
        "kpm_float": (torch.randn(N, S, dtype=torch.float64), None, False),
        "attn2_bool": (None, blocked2, False),
        "attn2_float": (None, torch.randn(L, S, dtype=torch.float64), False),
        "attn3_bool": (None, blocked3, False),
        "attn3_float": (None, torch.randn(N * H, L, S, dtype=torch.float64), False),
        "kpm_and_attn_bool": (kpm_bool, blocked3, False),
        "kpm_and_attn_float": (torch.randn(N, S, dtype=torch.float64),
                               torch.randn(L, S, dtype=torch.float64), False),
        "causal": (None, causal, True),
        "causal_kpm": (kpm_bool, causal, True),
    }[kind]


MASK_KINDS = ["none", "kpm_bool", "kpm_float", "attn2_bool", "attn2_float", "attn3_bool", "attn3_float",
              "kpm_and_attn_bool", "kpm_and_attn_float", "causal", "causal_kpm"]
WEIGHT_MODES = [(False, True), (True, True), (True, False)]  # (need_weights, average_attn_weights)


def _run(mod, q, k, v, kpm, am, causal, need_weights, average, dtype):
    """Forward + backward of ``mod`` in ``dtype``; returns (out, weights, grads by name)."""
    same_qk, same_kv = q is k, k is v

    def leaf(t):
        return t.detach().to(dtype).clone().requires_grad_()

    q = leaf(q)
    k = q if same_qk else leaf(k)
    v = k if same_kv else leaf(v)
    if am is not None and am.is_floating_point():
        am = leaf(am)
    if kpm is not None and kpm.is_floating_point():
        kpm = leaf(kpm)
    out, w = mod(q, k, v, key_padding_mask=kpm, need_weights=need_weights, attn_mask=am,
                 average_attn_weights=average, is_causal=causal)
    g = torch.Generator().manual_seed(1)
    loss = (out * torch.randn(out.shape, generator=g, dtype=torch.float64).to(dtype)).sum()
    if w is not None:
        loss = loss + (w * torch.randn(w.shape, generator=g, dtype=torch.float64).to(dtype)).sum()
    loss.backward()
    grads = {"q": q.grad, "k": k.grad, "v": v.grad}
    for name, t in (("attn_mask", am), ("kpm", kpm)):
        if t is not None and t.requires_grad:
            grads[name] = t.grad
    grads.update({n: p.grad for n, p in mod.named_parameters()})
    return out, w, grads


def _close(a, b, atol, rtol, what):
    assert a.shape == b.shape, f"{what}: shape {tuple(a.shape)} vs {tuple(b.shape)}"
    torch.testing.assert_close(a.to(torch.float64), b.to(torch.float64), atol=atol, rtol=rtol,
                               msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("config", list(CONFIGS))
def test_mha_matches_torch(config, batch_first):
    cfg = CONFIGS[config]
    ref, mine64 = _pair(cfg, batch_first)
    mine32 = MultiheadAttention.from_torch(ref).float()
    for self_attn in ([False] if "kdim" in cfg else [True, False]):
        q, k, v, N, L, S = _inputs(cfg, batch_first, self_attn)
        for kind in MASK_KINDS:
            kpm, am, causal = _masks(kind, N, L, S)
            for need_weights, average in WEIGHT_MODES:
                case = f"{config} batch_first={batch_first} self={self_attn} mask={kind} need_weights={need_weights} " \
                       f"average={average}"
                for m in (ref, mine64, mine32):
                    m.zero_grad(set_to_none=True)
                o_ref, w_ref, g_ref = _run(ref, q, k, v, kpm, am, causal, need_weights, average, torch.float64)
                o64, w64, g64 = _run(mine64, q, k, v, kpm, am, causal, need_weights, average, torch.float64)
                o32, w32, g32 = _run(mine32, q, k, v, kpm, am, causal, need_weights, average, torch.float32)
                assert o32.dtype == torch.float32
                _close(o64, o_ref, 1e-12, 1e-10, f"{case} out fp64")
                _close(o32, o_ref, 2e-5, 1e-5, f"{case} out fp32")
                assert (w_ref is None) == (w64 is None) == (w32 is None), case
                if w_ref is not None:
                    _close(w64, w_ref, 1e-12, 1e-10, f"{case} weights fp64")
                    _close(w32, w_ref, 2e-6, 1e-5, f"{case} weights fp32")
                assert g_ref.keys() == g64.keys() == g32.keys(), case
                for name in g_ref:
                    if g_ref[name] is None:
                        assert g64[name] is None and g32[name] is None, f"{case} grad {name}"
                        continue
                    _close(g64[name], g_ref[name], 1e-10, 1e-8, f"{case} grad {name} fp64")
                    _close(g32[name], g_ref[name], 1e-4, 1e-4, f"{case} grad {name} fp32")


def test_mha_fast_path_uses_llmaccel_attention(monkeypatch):
    calls = []
    real = attn_mod.attention

    def spy(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(attn_mod, "attention", spy)
    m = MultiheadAttention(E, H, batch_first=True)
    x = torch.randn(2, 5, E)
    kpm = torch.zeros(2, 5, dtype=torch.bool)
    kpm[0, -1] = True
    m(x, x, x, key_padding_mask=kpm, need_weights=False)
    assert len(calls) == 1
    q, k, v, mask = calls[0][:4]
    assert mask.dtype == torch.bool and bool(mask[0, 0, 0, 0]) and not bool(mask[0, 0, 0, -1])  # True = attend
    m(x, x, x, need_weights=True)  # explicit path
    assert len(calls) == 1
    causal = nn.Transformer.generate_square_subsequent_mask(5)
    m(x, x, x, attn_mask=causal, is_causal=True, need_weights=False)
    assert len(calls) == 2 and calls[1][3] is None and calls[1][5] is True  # the hint becomes the op's is_causal


@pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask")  # bool kpm + float mask: merged
def test_mha_unbatched():
    ref, mine = _pair({}, batch_first=True)
    x = torch.randn(6, E, dtype=torch.float64)
    kpm = torch.tensor([False] * 5 + [True])
    am = torch.randn(H, 6, 6, dtype=torch.float64)
    for need_weights in (False, True):
        o_ref, w_ref = ref(x, x, x, key_padding_mask=kpm, attn_mask=am, need_weights=need_weights,
                           average_attn_weights=False)
        o, w = mine.float()(x.float(), x.float(), x.float(), key_padding_mask=kpm, attn_mask=am.float(),
                            need_weights=need_weights, average_attn_weights=False)
        mine.double()
        assert o.shape == (6, E)
        _close(o, o_ref, 2e-5, 1e-5, "unbatched out")
        if need_weights:
            assert w.shape == (H, 6, 6)
            _close(w, w_ref, 2e-6, 1e-5, "unbatched weights")


def test_mha_same_init_state_dict_and_isinstance():
    for cfg in CONFIGS.values():
        torch.manual_seed(3)
        ref = nn.MultiheadAttention(E, H, **cfg)
        torch.manual_seed(3)
        mine = MultiheadAttention(E, H, **cfg)
        assert isinstance(mine, nn.MultiheadAttention)
        sd_ref, sd = ref.state_dict(), mine.state_dict()
        assert list(sd) == list(sd_ref)
        for key in sd_ref:
            assert torch.equal(sd[key], sd_ref[key]), key
        fresh = MultiheadAttention(E, H, **cfg)
        fresh.load_state_dict(sd_ref)  # strict: same keys and shapes
        assert all(torch.equal(fresh.state_dict()[key], sd_ref[key]) for key in sd_ref)


def test_mha_from_torch_copies_exactly():
    ref = nn.MultiheadAttention(E, H, dropout=0.25, add_bias_kv=True, add_zero_attn=True, kdim=12, vdim=10,
                                batch_first=True, dtype=torch.float64)
    ref.eval()
    ref.bias_k.requires_grad_(False)
    mine = MultiheadAttention.from_torch(ref)
    assert type(mine) is MultiheadAttention and not mine.training
    assert (mine.embed_dim, mine.num_heads, mine.dropout, mine.batch_first, mine.kdim, mine.vdim, mine.add_zero_attn) \
        == (ref.embed_dim, ref.num_heads, ref.dropout, ref.batch_first, ref.kdim, ref.vdim, ref.add_zero_attn)
    assert mine._qkv_same_embed_dim is False and mine.in_proj_weight is None
    for (n1, p1), (n2, p2) in zip(ref.named_parameters(), mine.named_parameters()):
        assert n1 == n2 and p1.dtype == p2.dtype and torch.equal(p1, p2) and p1.requires_grad == p2.requires_grad
        assert p1.data_ptr() != p2.data_ptr()  # a copy, not shared storage
    with pytest.raises(TypeError, match="from_torch"):
        MultiheadAttention.from_torch(nn.Linear(2, 2))


def test_mha_dropout_need_weights_matches_torch_under_seed():
    ref, mine = _pair({}, batch_first=True, dropout=0.3)
    ref.train()
    mine.train()
    x = torch.randn(2, 5, E, dtype=torch.float64)
    torch.manual_seed(7)
    o_ref, w_ref = ref(x, x, x, need_weights=True, average_attn_weights=False)
    torch.manual_seed(7)
    o, w = mine(x, x, x, need_weights=True, average_attn_weights=False)
    _close(o, o_ref, 1e-12, 1e-10, "dropout out")
    _close(w, w_ref, 1e-12, 1e-10, "dropout weights")


def test_mha_dropout_fused_path():
    ref, mine = _pair({}, batch_first=True, dropout=0.5)
    mine = mine.float()
    x = torch.randn(2, 4, E)
    mine.eval()
    o_eval, _ = mine(x, x, x, need_weights=False)
    mine.train()
    torch.manual_seed(11)
    o1, _ = mine(x, x, x, need_weights=False)
    torch.manual_seed(11)
    o2, _ = mine(x, x, x, need_weights=False)
    assert torch.equal(o1, o2)  # reproducible under a seed
    assert not torch.allclose(o1, o_eval, atol=1e-3)
    # Inverted dropout: the mean over draws approaches the eval output.
    mean = torch.stack([mine(x, x, x, need_weights=False)[0] for _ in range(400)]).mean(0)
    assert (mean - o_eval).abs().max() < 0.15 * o_eval.abs().max()
    xg = x.clone().requires_grad_()
    mine(xg, xg, xg, need_weights=False)[0].sum().backward()
    assert torch.isfinite(xg.grad).all() and mine.in_proj_weight.grad is not None


def test_mha_bf16():
    ref, mine = _pair({}, batch_first=True)
    mine = mine.to(torch.bfloat16)
    x = torch.randn(2, 9, E, dtype=torch.float64)
    o_ref, _ = ref(x, x, x, need_weights=False)
    o, _ = mine(x.bfloat16(), x.bfloat16(), x.bfloat16(), need_weights=False)
    assert o.dtype == torch.bfloat16
    _close(o, o_ref, 5e-2, 5e-2, "bf16 out")


def test_mha_fully_masked_row_is_finite():
    _, mine = _pair({}, batch_first=True)
    mine = mine.float()
    x = torch.randn(2, 4, E)
    kpm = torch.zeros(2, 4, dtype=torch.bool)
    kpm[1] = True  # every key of batch 1 padded
    out, _ = mine(x, x, x, key_padding_mask=kpm, need_weights=False)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[1], mine.out_proj.bias.expand(4, E))  # attention output 0, then out_proj


def test_mha_errors():
    m = MultiheadAttention(E, H)
    x = torch.randn(3, 2, E)
    with pytest.raises(RuntimeError, match="Need attn_mask"):
        m(x, x, x, is_causal=True)
    with pytest.raises(RuntimeError, match="2D attn_mask"):
        m(x, x, x, attn_mask=torch.zeros(2, 2))
    with pytest.raises(TypeError, match="key_padding_mask"):
        m(x, x, x, key_padding_mask=torch.zeros(2, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="embedding dim"):
        m(torch.randn(3, 2, E + 1), x, x)


# --------------------------------------------------------------------------
# CachedAttention / KVCache
# --------------------------------------------------------------------------

def _reference_causal(mod, x, mask=None):
    """Plain SDPA with K/V repeated over the group: the full causal forward."""
    B, L, _ = x.shape
    q = mod.q_proj(x).view(B, L, mod.num_heads, mod.head_dim).transpose(1, 2)
    k = mod.k_proj(x).view(B, L, mod.num_kv_heads, mod.head_dim).transpose(1, 2)
    v = mod.v_proj(x).view(B, L, mod.num_kv_heads, mod.head_dim).transpose(1, 2)
    g = mod.num_heads // mod.num_kv_heads
    k, v = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)
    causal = torch.ones(L, L, dtype=torch.bool).tril()
    m = causal if mask is None else causal & mask
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=m)
    return mod.o_proj(o.transpose(1, 2).reshape(B, L, -1))


@pytest.mark.parametrize("heads", [(4, 4), (4, 2), (4, 1)])
def test_cached_attention_full_forward_and_grad(heads):
    mod = CachedAttention(32, heads[0], heads[1], bias=True)
    x = torch.randn(2, 9, 32, requires_grad=True)
    out = mod(x)
    ref = _reference_causal(mod, x)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    gx, = torch.autograd.grad(out.square().sum(), x)
    gr, = torch.autograd.grad(ref.square().sum(), x)
    torch.testing.assert_close(gx, gr, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("max_len", [None, 24])
@pytest.mark.parametrize("heads", [(4, 4), (4, 2), (8, 1)])
@pytest.mark.parametrize("schedule", [[1] * 20, [5] + [1] * 15, [3, 1, 4, 1, 5, 2, 1, 3]])
def test_cached_attention_incremental_matches_full(heads, max_len, schedule):
    T = sum(schedule)
    mod = CachedAttention(32, heads[0], heads[1], head_dim=8).eval()
    x = torch.randn(3, T, 32)
    with torch.no_grad():
        full = mod(x)
        cache = mod.new_cache(3, max_len=max_len)
        pieces, pos = [], 0
        for n in schedule:
            pieces.append(mod(x[:, pos:pos + n], cache))
            pos += n
            assert len(cache) == pos
    inc = torch.cat(pieces, dim=1)
    torch.testing.assert_close(inc, full, atol=2e-6, rtol=1e-5)
    if max_len is not None:
        assert cache.capacity == max_len  # preallocated: never reallocated
    else:
        assert cache.capacity >= T


def test_cached_attention_padding_mask_with_cache():
    """A key-padding mask (bool, True = attend) combined with the causal mask, over cache + new tokens."""
    mod = CachedAttention(16, 4, 2).eval()
    B, T = 2, 8
    x = torch.randn(B, T, 16)
    keep = torch.ones(B, T, dtype=torch.bool)
    keep[1, :3] = False  # left padding
    with torch.no_grad():
        ref = _reference_causal(mod, x, keep.view(B, 1, 1, T))
        cache = mod.new_cache(B)
        outs = [mod(x[:, :4], cache, attn_mask=keep[:, :4].view(B, 1, 1, 4))]
        for t in range(4, T):
            outs.append(mod(x[:, t:t + 1], cache, attn_mask=keep[:, :t + 1].view(B, 1, 1, t + 1)))
    out = torch.cat(outs, dim=1)
    valid = keep  # padded query rows are fully masked (SDPA: NaN, llmaccel: 0): compare real tokens
    torch.testing.assert_close(out[valid], ref[valid], atol=2e-6, rtol=1e-5)


def test_kv_cache_growth_and_limits():
    c = KVCache(1, 2, 4)
    assert c.capacity == 16
    ks = [torch.randn(1, 2, n, 4) for n in (10, 10, 30)]
    for k in ks:
        kk, vv = c.append(k, -k)
    assert len(c) == 50 and c.capacity >= 50
    torch.testing.assert_close(kk, torch.cat(ks, dim=2))
    torch.testing.assert_close(vv, -torch.cat(ks, dim=2))
    c.reset()
    assert len(c) == 0
    fixed = KVCache(1, 2, 4, max_len=5)
    fixed.append(torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4))
    with pytest.raises(RuntimeError, match="max_len=5"):
        fixed.append(torch.randn(1, 2, 1, 4), torch.randn(1, 2, 1, 4))
    with pytest.raises(ValueError, match="expected key"):
        KVCache(1, 2, 4).append(torch.randn(1, 3, 1, 4), torch.randn(1, 3, 1, 4))
    with pytest.raises(ValueError, match="multiple of num_kv_heads"):
        CachedAttention(32, 4, 3)


def test_cached_attention_state_dict_roundtrip():
    a = CachedAttention(32, 4, 2)
    b = CachedAttention(32, 4, 2)
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    x = torch.randn(1, 3, 32)
    torch.testing.assert_close(a(x), b(x))
    assert set(a.state_dict()) == {"q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight"}
