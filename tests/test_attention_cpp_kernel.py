"""llmaccel._C.attention_fwd (the C++/OpenMP fused attention kernel), called directly.

Reference: softmax(q k^T * scale + mask) v in float64 (GQA via repeat_interleave in the
reference only).  Tolerance is flash-attention's rule:
    max|ours - ref64| <= 2 * max|sdpa_fp32 - ref64| + 1e-5
with sdpa_fp32 = torch.nn.functional.scaled_dot_product_attention on the fp32 inputs.
"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from llmaccel import _C
from llmaccel.ops._cpp_views import view

from cpp_calls import attention_fwd_kwargs

VARIANTS = _C.attention_variants()
NTHREADS = max(1, torch.get_num_threads())


def run_kernel(q, k, v, mask=None, is_causal=False, bottom_right=False, scale=None, with_lse=True,
               variant="", nthreads=NTHREADS, out_strided=False):
    """q [B,Hq,Lq,D], k [B,Hkv,Lk,D], v [B,Hkv,Lk,Dv] fp32, any strides; mask broadcastable to
    [B,Hq,Lq,Lk] (bool or float), passed as an expanded view (stride 0 on broadcast dims)."""
    B, Hq, Lq, D = q.shape
    _, Hkv, Lk, Dv = v.shape
    if out_strided:  # [B, L, H, D] memory, viewed as [B, H, L, D]
        out = torch.full((B, Lq, Hq, Dv), float("nan")).transpose(1, 2)
    else:
        out = torch.full((B, Hq, Lq, Dv), float("nan"))
    lse = torch.full((B, Hq, Lq), float("nan")) if with_lse else None
    if mask is not None:
        mask = mask.expand(B, Hq, Lq, Lk)
        assert mask.dtype in (torch.bool, torch.float32)
    _C.attention_fwd(view(q), view(k), view(v), None if mask is None else view(mask), is_causal, bottom_right,
                     1.0 / math.sqrt(D) if scale is None else scale, view(out),
                     view(lse) if with_lse else None, nthreads, variant)
    return out, lse


def causal_mask(Lq, Lk, bottom_right):
    off = Lk - Lq if bottom_right else 0
    return torch.arange(Lk)[None, :] <= torch.arange(Lq)[:, None] + off


def reference(q, k, v, mask=None, scale=None):
    """float64 (out, lse); fully masked rows -> out 0, lse -inf."""
    Hq, Hkv = q.shape[1], k.shape[1]
    q, k, v = q.double(), k.double(), v.double()
    k = k.repeat_interleave(Hq // Hkv, dim=1)
    v = v.repeat_interleave(Hq // Hkv, dim=1)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = q @ k.transpose(-1, -2) * scale
    if mask is not None:
        if mask.dtype == torch.bool:
            s = s.masked_fill(~mask, float("-inf"))
        else:
            s = s + mask.double()
    lse = torch.logsumexp(s, dim=-1)
    p = torch.exp(s - lse[..., None])
    p = torch.nan_to_num(p, nan=0.0)  # rows with lse = -inf
    return p @ v, lse


def sdpa_fp32(q, k, v, mask=None, scale=None):
    Hq, Hkv = q.shape[1], k.shape[1]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=Hq != Hkv)


def assert_close(q, k, v, mask=None, is_causal=False, bottom_right=False, scale=None, variant="", **kw):
    if is_causal:
        mask_ref = causal_mask(q.shape[2], k.shape[2], bottom_right)
    else:
        mask_ref = mask
    out, lse = run_kernel(q, k, v, mask, is_causal, bottom_right, scale, variant=variant, **kw)
    ref, ref_lse = reference(q, k, v, mask_ref, scale)
    sd = sdpa_fp32(q, k, v, mask_ref, scale).double()
    # SDPA's own fully masked rows may be NaN: compare it on attended rows only.
    live = torch.isfinite(ref_lse)[..., None].expand_as(ref)
    sdpa_err = (sd - ref)[live].abs().max().item() if live.any() else 0.0
    if math.isnan(sdpa_err):
        sdpa_err = 0.0
    tol = 2 * sdpa_err + 1e-5
    assert torch.isfinite(out).all(), "non-finite output"
    err = (out.double() - ref).abs().max().item() if out.numel() else 0.0
    assert err <= tol, f"max err {err:.3g} > tol {tol:.3g} (sdpa err {sdpa_err:.3g})"
    # lse: exact -inf where fully masked, else close to the float64 value
    # (relative to the score magnitude, which sets fp32's rounding of s).
    assert torch.equal(torch.isinf(lse), torch.isinf(ref_lse))
    if live.any():
        fin = torch.isfinite(ref_lse)
        smax = (q.double().abs().amax() * k.double().abs().amax() * q.shape[-1]
                * (1.0 / math.sqrt(q.shape[-1]) if scale is None else abs(scale))).item()
        lerr = (lse.double()[fin] - ref_lse[fin]).abs().max().item()
        assert lerr <= 1e-5 * (1 + abs(ref_lse[fin]).max().item()) + 3e-7 * smax, f"lse err {lerr:.3g}"
    return err, tol


def make(B, Hq, Hkv, Lq, Lk, D, Dv=None, transposed=False, mult=1.0):
    Dv = D if Dv is None else Dv
    if transposed:  # [B, L, H, D] memory viewed as [B, H, L, D]
        q = torch.randn(B, Lq, Hq, D).transpose(1, 2)
        k = torch.randn(B, Lk, Hkv, D).transpose(1, 2)
        v = torch.randn(B, Lk, Hkv, Dv).transpose(1, 2)
    else:
        q, k, v = torch.randn(B, Hq, Lq, D), torch.randn(B, Hkv, Lk, D), torch.randn(B, Hkv, Lk, Dv)
    return q * mult, k * mult, v


HEADS = [(1, 1), (4, 4), (8, 2), (4, 1)]
LENS = [(1, 1), (17, 17), (113, 113), (239, 239), (1, 1023), (17, 113), (113, 17)]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("heads", HEADS, ids=str)
@pytest.mark.parametrize("lens", LENS, ids=str)
def test_shapes_no_mask(variant, heads, lens):
    Hq, Hkv = heads
    if variant == "generic" and heads in [(4, 4), (1, 1)]:
        pytest.skip("generic: GQA layouts only")
    Lq, Lk = lens
    for B, D in [(1, 64), (2, 80)] if variant != "generic" else [(2, 80)]:
        q, k, v = make(B, Hq, Hkv, Lq, Lk, D)
        assert_close(q, k, v, variant=variant)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("D", [16, 64, 80, 128, 96, 112, 256, 5])
def test_head_dims(variant, D):
    q, k, v = make(2, 8, 2, 37, 150, D, transposed=True)
    assert_close(q, k, v, variant=variant)
    assert_close(q, k, v, is_causal=True, variant=variant, out_strided=True)


@pytest.mark.parametrize("variant", VARIANTS)
def test_dv_differs_from_d(variant):
    q, k, v = make(1, 4, 2, 29, 70, 48, Dv=24)
    assert_close(q, k, v, variant=variant)
    q, k, v = make(1, 4, 2, 29, 70, 16, Dv=130)
    assert_close(q, k, v, is_causal=True, bottom_right=True, variant=variant)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("heads", HEADS, ids=str)
@pytest.mark.parametrize("lens", [(113, 113), (17, 113), (113, 17), (1, 1023), (239, 239), (1, 1)], ids=str)
@pytest.mark.parametrize("bottom_right", [False, True])
def test_causal(variant, heads, lens, bottom_right):
    Hq, Hkv = heads
    if variant == "generic" and heads != (8, 2):
        pytest.skip("generic: one head layout (test_variants_agree covers the rest)")
    q, k, v = make(2, Hq, Hkv, *lens, 64, transposed=True)
    assert_close(q, k, v, is_causal=True, bottom_right=bottom_right, variant=variant)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("kind", ["bool", "float", "bool_bcast", "float_bcast", "float_2d", "bool_strided"])
def test_masks(variant, kind):
    B, Hq, Hkv, Lq, Lk, D = 2, 8, 2, 45, 300, 64
    q, k, v = make(B, Hq, Hkv, Lq, Lk, D)
    if kind == "bool":
        mask = torch.rand(B, Hq, Lq, Lk) > 0.3
        mask[0, 1, 3] = False  # fully masked rows
        mask[1, :, 7] = False
    elif kind == "bool_bcast":
        mask = torch.rand(B, 1, Lq, 1) > 0.2  # whole rows masked or kept, broadcast over heads and keys
        mask = mask & (torch.rand(1, 1, 1, Lk) > 0.5) | (torch.rand(B, 1, Lq, 1) > 0.5)
        mask[:, :, 5] = False
    elif kind == "bool_strided":
        mask = (torch.rand(B, Hq, Lk, Lq) > 0.5).transpose(-1, -2)  # m_sk != 1
        mask[0, 0, 0] = False
    elif kind == "float":
        mask = torch.randn(B, Hq, Lq, Lk) * 3
        mask[0, 2, 4] = float("-inf")
        mask[1, 3, :, :100] = float("-inf")
    elif kind == "float_bcast":
        mask = torch.randn(1, Hq, 1, Lk) * 5
    else:
        mask = torch.randn(Lq, Lk).tril(diagonal=Lk - Lq)
        mask = mask.masked_fill(mask == 0, float("-inf"))
    assert_close(q, k, v, mask=mask, variant=variant)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("kind", ["key_padding", "padding_and_causal", "rows_grow", "rows_shrink", "strided_padding"])
def test_padding_masks_cut_and_skip_key_blocks(variant, kind):
    """Bool masks whose tail keys no row attends: the kernel cuts each key block at the last attended key
    and skips blocks nobody attends (bool_mask_extent in csrc/attention_driver.h).  Lk = 1100 gives three
    key blocks of 368; Lq = 150 gives several q blocks sharing packed K^T (the reuse path), so a later q
    block attending more keys than an earlier one must still find them packed."""
    B, Hq, Hkv, Lq, Lk, D = 4, 8, 2, 150, 1100, 32
    q, k, v = make(B, Hq, Hkv, Lq, Lk, D, transposed=kind == "strided_padding")
    lens = torch.tensor([3, 400, 1100, 0])  # the last sequence attends nothing: its rows are fully masked
    j = torch.arange(Lk)
    pad = (j[None, :] < lens[:, None])[:, None, None, :]  # [B, 1, 1, Lk], broadcast over heads and queries
    if kind == "padding_and_causal":
        i = torch.arange(Lq)
        mask = pad & (j[None, :] <= i[:, None] + Lk - Lq)[None, None]
    elif kind in ("rows_grow", "rows_shrink"):
        i = torch.arange(Lq) if kind == "rows_grow" else Lq - 1 - torch.arange(Lq)
        # query i attends keys below lens[b] + 5 * i (grow) or + 5 * (Lq - 1 - i) (shrink), per head too;
        # the heaviest q block runs first, so "shrink" has later q blocks attend keys the first one did not
        mask = j[None, None, None, :] < (lens[:, None, None, None] + 5 * i[None, None, :, None]
                                         + 7 * torch.arange(Hq)[None, :, None, None])
    else:
        mask = pad
    assert_close(q, k, v, mask=mask, variant=variant)


@pytest.mark.parametrize("variant", VARIANTS)
def test_fully_masked_everything(variant):
    q, k, v = make(1, 4, 2, 10, 50, 32)
    out, lse = run_kernel(q, k, v, mask=torch.zeros(1, 1, 1, 1, dtype=torch.bool), variant=variant)
    assert torch.equal(out, torch.zeros_like(out))
    assert torch.isneginf(lse).all()
    # bottom-right causal with Lq > Lk: the first Lq - Lk rows see no key
    q, k, v = make(1, 4, 4, 40, 25, 32)
    assert_close(q, k, v, is_causal=True, bottom_right=True, variant=variant)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("causal", [False, True])
def test_large_magnitude(variant, causal):
    q, k, v = make(1, 8, 2, 70, 333, 64, mult=100.0)
    assert_close(q, k, v, is_causal=causal, variant=variant)
    mask = torch.randn(1, 1, 70, 333) * 1e4
    assert_close(q, k, v, mask=mask, variant=variant)


@pytest.mark.parametrize("variant", VARIANTS)
def test_decode_split_kv_threads(variant):
    # Few work items: the kernel splits the KV range across threads (flash-decoding).
    for B, Hq, Hkv, Lk in [(1, 8, 1, 3000), (1, 32, 8, 1500), (2, 4, 4, 2049)]:
        q, k, v = make(B, Hq, Hkv, 1, Lk, 128)
        for nt in (1, 3):
            assert_close(q, k, v, variant=variant, nthreads=nt)
    q, k, v = make(1, 4, 1, 5, 2000, 64)
    assert_close(q, k, v, is_causal=True, bottom_right=True, variant=variant, nthreads=3)
    mask = torch.rand(1, 4, 5, 2000) > 0.5
    mask[0, 0, 0, :1500] = False
    mask[0, 1, 2] = False
    assert_close(q, k, v, mask=mask, variant=variant, nthreads=4)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("D", [5, 16, 80, 128])
def test_few_rows_direct_qk(variant, D):
    # M = group * Lq <= 16 rows take the decode path (Q K^T straight from the
    # K rows, 4 keys x 4 rows at a time): ragged row groups (M = 1, 3, 5, 15,
    # 16), ragged key groups (Lk % 4 != 0), ragged D, strided K rows.
    for (Hq, Hkv, Lq, Lk) in [(1, 1, 1, 1), (3, 1, 1, 37), (5, 1, 1, 1023), (5, 1, 3, 514), (8, 2, 4, 9),
                              (16, 1, 1, 130)]:
        for transposed in (False, True):
            q, k, v = make(1, Hq, Hkv, Lq, Lk, D, transposed=transposed)
            assert_close(q, k, v, variant=variant)
    q, k, v = make(1, 6, 2, 2, 700, D)
    assert_close(q, k, v, is_causal=True, bottom_right=True, variant=variant, nthreads=3)
    if D == 5:  # D = 0 on this path too: all scores 0 -> uniform average of v
        v = torch.randn(1, 1, 21, 8)
        out, lse = run_kernel(torch.empty(1, 4, 1, 0), torch.empty(1, 1, 21, 0), v, scale=1.0, variant=variant)
        torch.testing.assert_close(out, v.mean(dim=2, keepdim=True).expand(1, 4, 1, 8), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(lse, torch.full_like(lse, math.log(21)))


@pytest.mark.parametrize("variant", VARIANTS)
def test_scale_and_zero_dims(variant):
    q, k, v = make(1, 2, 1, 9, 20, 32)
    assert_close(q, k, v, scale=0.37, variant=variant)
    # D = 0: all scores 0 -> uniform average of v (SDPA semantics)
    q0, k0 = torch.empty(1, 2, 9, 0), torch.empty(1, 1, 20, 0)
    out, lse = run_kernel(q0, k0, v, scale=1.0, variant=variant)
    torch.testing.assert_close(out, v.mean(dim=2, keepdim=True).expand(1, 2, 9, 32), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(lse, torch.full_like(lse, math.log(20)))
    # Dv = 0: only lse
    out, lse = run_kernel(q, k, torch.empty(1, 1, 20, 0), variant=variant)
    assert out.shape[-1] == 0 and torch.isfinite(lse).all()
    # Lk = 0: every row fully masked
    out, lse = run_kernel(q, torch.empty(1, 1, 0, 32), torch.empty(1, 1, 0, 32), variant=variant)
    assert torch.equal(out, torch.zeros_like(out)) and torch.isneginf(lse).all()
    # empty batch / queries: nothing happens
    run_kernel(torch.empty(0, 2, 9, 32), torch.empty(0, 1, 20, 32), torch.empty(0, 1, 20, 32), variant=variant)
    run_kernel(torch.empty(1, 2, 0, 32), k, v, variant=variant)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dims", [(1, 1), (7, 9), (9, 7), (33, 23)], ids=str)
def test_ragged_vector_tails(variant, dims):
    # Head dims and key counts around the vector widths (8 floats for avx2, 16
    # for avx512): masked loads of the last D / Dv vector, keys past n in the
    # packed K^T, ragged 4-key groups of the direct path.  Lq = 1 with 4 query
    # heads takes the direct (decode) path, Lq = 6 the packed one.
    D, Dv = dims
    for Lk in range(1, 10):
        for Lq in (1, 6):
            q, k, v = make(1, 4, 1, Lq, Lk, D, Dv=Dv)
            assert_close(q, k, v, variant=variant)
            if Lq > 1:
                assert_close(q, k, v, is_causal=True, bottom_right=True, variant=variant)
    # Decode with several row and column tiles of O (M = 8, Dv = 33 or 23) over
    # more than one L1 chunk of keys, and a KV split.
    for Hq, Lk in [(8, 70), (4, 300)]:
        q, k, v = make(1, Hq, 1, 1, Lk, D, Dv=Dv)
        assert_close(q, k, v, variant=variant, nthreads=1)
        assert_close(q, k, v, variant=variant, nthreads=3)


@pytest.mark.parametrize("variant", VARIANTS)
def test_exp2_tails(variant):
    # Every length up to 2 vectors + 1: the same values as one long call, and
    # nothing written past n.
    x = torch.linspace(-130, 130, 35)
    full = torch.empty_like(x)
    _C.attention_exp2(x.numel(), x.data_ptr(), full.data_ptr(), variant)
    for n in range(0, 34):
        y = torch.full((n + 16,), 7.0)
        _C.attention_exp2(n, x[1:].data_ptr(), y.data_ptr(), variant)
        assert torch.equal(y[:n], full[1:n + 1]), n
        assert (y[n:] == 7.0).all(), n


def test_variants_agree():
    if len(VARIANTS) < 2:
        pytest.skip("only one variant on this CPU")
    q, k, v = make(2, 8, 2, 77, 190, 80)
    b, lb = run_kernel(q, k, v, is_causal=True, variant="generic")
    for name in VARIANTS:
        a, la = run_kernel(q, k, v, is_causal=True, variant=name)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(la, lb, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_exp2_accuracy(variant):
    x = torch.cat([torch.linspace(-126, 128, 2_000_003), torch.rand(100_000) * 2 - 1,
                   torch.tensor([0.0, 0.5, -0.5, 1.0, -1.0, 127.0, -126.0, 64.49, -125.9])])
    y = torch.empty_like(x)
    _C.attention_exp2(x.numel(), x.data_ptr(), y.data_ptr(), variant)
    exact = torch.exp2(x.double())
    fin = x < 128
    # error in ulps of the exact result (ulp of a normal float at exact's binade)
    ulp = torch.pow(2.0, torch.floor(torch.log2(exact[fin])) - 23)
    ulps = ((y.double()[fin] - exact[fin]).abs() / ulp).max().item()
    assert ulps <= 2.0, f"{ulps} ulp"
    assert torch.isinf(y[~fin]).all()
    special = torch.tensor([float("-inf"), -127.0, -200.0, -1e30, float("inf"), 200.0, float("nan")])
    ys = torch.empty_like(special)
    _C.attention_exp2(special.numel(), special.data_ptr(), ys.data_ptr(), variant)
    assert ys[:4].tolist() == [0.0, 0.0, 0.0, 0.0]
    assert math.isinf(ys[4]) and math.isinf(ys[5]) and math.isnan(ys[6])


def _args(**over):
    """A valid call (q 1x4x8x16, k/v 1x2x8x16, GQA, a float mask when one is asked for) as views, with
    ``over`` applied (tests/cpp_calls.py, ``attention_fwd_kwargs``)."""
    kw, keep, _ = attention_fwd_kwargs((1, 4, 8, 16), (1, 2, 8, 16), torch.float32, **{"scale": 0.25, "nthreads": 2,
                                                                                        **over})
    return kw, keep


def test_valid_args_run():
    a, keep = _args()
    _C.attention_fwd(**a)
    q, k, v, _, out = keep
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, scale=0.25, enable_gqa=True))


@pytest.mark.parametrize("over,exc,msg", [
    ({"q.sizes": [-1, 4, 8, 16]}, ValueError, "q has a negative size"),
    ({"k.sizes": [1, 2, -3, 16]}, ValueError, "k has a negative size"),
    ({"q.sizes": [1, 3, 8, 16], "out.sizes": [1, 3, 8, 16]}, ValueError, "multiple of Hkv"),
    ({"k.sizes": [1, 0, 8, 16], "v.sizes": [1, 0, 8, 16]}, ValueError, "Hkv"),
    ({"k.sizes": [1, 2, 8, 12]}, ValueError, r"k must have shape \[1, 2, 8, 16\]"),
    ({"v.sizes": [1, 2, 7, 16]}, ValueError, r"v must have shape \[1, 2, 8, 16\]"),
    ({"out.sizes": [1, 4, 8, 15]}, ValueError, r"out must have shape \[1, 4, 8, 16\]"),
    ({"mask.sizes": [1, 4, 8, 9]}, ValueError, r"mask must have shape \[1, 4, 8, 8\]"),
    ({"lse.sizes": [1, 4, 9], "lse.strides": [36, 9, 1], "lse.dtype": "float32"}, ValueError, "lse must have shape"),
    ({"q.sizes": [1, 4, 8]}, ValueError, "q must be 4-D"),
    ({"q.dtype": "float16"}, ValueError, "q must be float32, got float16"),
    ({"q.addr": 0}, ValueError, "null"),
    ({"v.addr": 0}, ValueError, "null"),
    ({"out.addr": 0}, ValueError, "null"),
    ({"mask.dtype": "int32"}, ValueError, "mask must be bool or uint8 or float32"),
    ({"mask.dtype": "bool", "mask.addr": 0}, ValueError, "null"),
    ({"mask.dtype": "float32", "is_causal": True}, ValueError, "causal"),
    ({"causal_bottom_right": True}, ValueError, "causal_bottom_right"),
    ({"nthreads": 0}, ValueError, "nthreads"),
    ({"q.strides": [512, 128, -16, 1]}, ValueError, "stride"),
    ({"k.strides": [256, 128, 1 << 62, 1]}, OverflowError, "overflow"),
    ({"q.sizes": [1, 4, 1 << 40, 16], "q.strides": [512, 128, 1 << 30, 1], "out.sizes": [1, 4, 1 << 40, 16]},
     OverflowError, "overflow"),
    ({"variant": "nope"}, ValueError, "variant"),
])
def test_bad_inputs_raise(over, exc, msg):
    a, keep = _args(**over)
    with pytest.raises(exc, match=msg) as e:
        _C.attention_fwd(**a)
    assert str(e.value).startswith("llmaccel::attention:")


# -------------------------------------------------------------------------
# backward: _C.attention_bwd against float64 autograd of the naive reference
# -------------------------------------------------------------------------

def run_bwd(q, k, v, dout, mask=None, is_causal=False, bottom_right=False, scale=None, dlse=None, variant="",
            nthreads=NTHREADS, grads_strided=False):
    """Forward with attention_fwd, then attention_bwd; returns (dq, dk, dv)."""
    B, Hq, Lq, D = q.shape
    _, Hkv, Lk, Dv = v.shape
    out, lse = run_kernel(q, k, v, mask, is_causal, bottom_right, scale, variant=variant, nthreads=nthreads)
    if grads_strided:  # [B, L, H, D] memory viewed as [B, H, L, D]
        dq = torch.full((B, Lq, Hq, D), float("nan")).transpose(1, 2)
        dk = torch.full((B, Lk, Hkv, D), float("nan")).transpose(1, 2)
        dv = torch.full((B, Lk, Hkv, Dv), float("nan")).transpose(1, 2)
    else:
        dq = torch.full((B, Hq, Lq, D), float("nan"))
        dk = torch.full((B, Hkv, Lk, D), float("nan"))
        dv = torch.full((B, Hkv, Lk, Dv), float("nan"))
    if mask is not None:
        mask = mask.expand(B, Hq, Lq, Lk)
    dl = dlse.contiguous() if dlse is not None else None
    _C.attention_bwd(view(q), view(k), view(v), None if mask is None else view(mask), is_causal, bottom_right,
                     1.0 / math.sqrt(D) if scale is None else scale, view(out), view(lse), view(dout),
                     None if dl is None else view(dl), view(dq), view(dk), view(dv), nthreads, variant)
    return dq, dk, dv


def reference_grads(q, k, v, dout, mask=None, scale=None, dlse=None):
    """float64 autograd of the naive reference (fully masked rows: out 0, lse -inf, no gradient)."""
    leaves = [t.detach().double().requires_grad_(True) for t in (q, k, v)]
    Hq, Hkv = q.shape[1], k.shape[1]
    qd, kd, vd = leaves
    kd = kd.repeat_interleave(Hq // Hkv, dim=1)
    vd = vd.repeat_interleave(Hq // Hkv, dim=1)
    sc = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = qd @ kd.transpose(-1, -2) * sc
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else s + mask.double()
    live = torch.isfinite(s).any(-1, keepdim=True)
    s = torch.where(live, s, torch.zeros_like(s))  # fully masked rows: finite, weight 0 below
    lse = torch.logsumexp(s, dim=-1)
    p = torch.exp(s - lse[..., None]) * live
    loss = ((p @ vd) * dout.double()).sum()
    if dlse is not None:
        loss = loss + (lse * live[..., 0] * dlse.double()).sum()
    loss.backward()
    return [t.grad for t in leaves]


def sdpa_grads(q, k, v, dout, mask=None, scale=None):
    leaves = [t.detach().clone().requires_grad_(True) for t in (q, k, v)]
    sdpa_fp32(*leaves, mask, scale).backward(dout)
    return [torch.nan_to_num(t.grad) for t in leaves]


def assert_bwd_close(q, k, v, mask=None, is_causal=False, bottom_right=False, scale=None, variant="", dlse=None,
                     **kw):
    dout = torch.randn(*q.shape[:3], v.shape[3])
    mask_ref = causal_mask(q.shape[2], k.shape[2], bottom_right) if is_causal else mask
    ours = run_bwd(q, k, v, dout, mask, is_causal, bottom_right, scale, dlse=dlse, variant=variant, **kw)
    ref = reference_grads(q, k, v, dout, mask_ref, scale, dlse)
    base = sdpa_grads(q, k, v, dout, mask_ref, scale) if dlse is None else None
    for name, o, r, b in zip(("dq", "dk", "dv"), ours, ref, base or [None] * 3):
        assert torch.isfinite(o).all(), f"{name}: non-finite"
        if o.numel() == 0:
            continue
        err = (o.double() - r).abs().max().item()
        base_err = (b.double() - r).abs().max().item() if b is not None else 0.0
        tol = 2 * base_err + 2e-5 * max(1.0, r.abs().max().item())
        assert err <= tol, f"{name}: max err {err:.3g} > tol {tol:.3g} (sdpa err {base_err:.3g})"
    return ours


BWD_HEADS = [(1, 1), (3, 3), (4, 1), (8, 2)]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("heads", BWD_HEADS)
@pytest.mark.parametrize("lens", [(1, 1), (7, 13), (70, 70), (130, 67), (33, 150)])
def test_bwd_shapes(variant, heads, lens):
    q, k, v = make(2, heads[0], heads[1], lens[0], lens[1], 24, Dv=40)
    assert_bwd_close(q, k, v, variant=variant)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("heads", [(4, 1), (8, 2)])
@pytest.mark.parametrize("lens", [(65, 65), (100, 37), (37, 100), (129, 200)])
@pytest.mark.parametrize("bottom_right", [False, True])
def test_bwd_causal(variant, heads, lens, bottom_right):
    q, k, v = make(1, heads[0], heads[1], lens[0], lens[1], 32)
    assert_bwd_close(q, k, v, is_causal=True, bottom_right=bottom_right, variant=variant)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("D", [16, 64, 80])
def test_bwd_head_dims(variant, D):
    q, k, v = make(1, 4, 2, 90, 75, D)
    assert_bwd_close(q, k, v, is_causal=True, variant=variant)
    assert_bwd_close(q, k, v, variant=variant, scale=0.3)


@pytest.mark.parametrize("variant", VARIANTS)
def test_bwd_bool_masks_and_fully_masked_rows(variant):
    B, Hq, Hkv, Lq, Lk = 2, 4, 1, 50, 70
    q, k, v = make(B, Hq, Hkv, Lq, Lk, 32)
    mask = torch.rand(B, Hq, Lq, Lk) > 0.5
    mask[0, 1, 3] = False            # fully masked rows: every gradient from them is 0
    mask[1, :, 10:20] = False
    mask[0, 2, 5] = False
    mask[0, 2, 5, 7] = True          # a row with a single live key
    dq, dk, dv = assert_bwd_close(q, k, v, mask, variant=variant)
    assert (dq[0, 1, 3] == 0).all() and (dq[1, :, 10:20] == 0).all()
    # broadcast 2-D mask ([Lq, Lk], stride 0 on B and H) with whole masked rows
    m2 = torch.rand(Lq, Lk) > 0.3
    m2[4] = False
    dq, _, _ = assert_bwd_close(q, k, v, m2, variant=variant)
    assert (dq[:, :, 4] == 0).all()
    # everything masked: all gradients 0
    dq, dk, dv = run_bwd(q, k, v, torch.randn(B, Hq, Lq, 32), torch.zeros(Lq, Lk, dtype=torch.bool),
                         variant=variant)
    assert (dq == 0).all() and (dk == 0).all() and (dv == 0).all()


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("kind", ["key_padding", "rows_shrink"])
def test_bwd_padding_masks_cut_key_blocks(variant, kind):
    """Backward with keys no row attends (bool padding): both passes cut each 64-key block at the last
    attended key and skip empty ones; those keys' dK / dV rows must still be written, as zeros."""
    B, Hq, Hkv, Lq, Lk = 3, 4, 2, 90, 300
    q, k, v = make(B, Hq, Hkv, Lq, Lk, 32)
    lens = torch.tensor([3, 130, 0])
    j = torch.arange(Lk)
    if kind == "key_padding":
        mask = (j[None, :] < lens[:, None])[:, None, None, :]
    else:  # extents shrink down the rows and differ per head
        i = Lq - 1 - torch.arange(Lq)
        mask = j[None, None, None, :] < (lens[:, None, None, None] + 2 * i[None, None, :, None]
                                         + 5 * torch.arange(Hq)[None, :, None, None])
    dq, dk, dv = assert_bwd_close(q, k, v, mask, variant=variant)
    if kind == "key_padding":
        assert (dk[0, :, 3:] == 0).all() and (dv[0, :, 3:] == 0).all()
        assert (dk[2] == 0).all() and (dv[2] == 0).all() and (dq[2] == 0).all()


@pytest.mark.parametrize("variant", VARIANTS)
def test_bwd_float_mask_and_dlse(variant):
    q, k, v = make(1, 4, 2, 40, 55, 16)
    fm = torch.randn(1, 1, 40, 55)
    assert_bwd_close(q, k, v, fm, variant=variant)
    dlse = torch.randn(1, 4, 40)
    assert_bwd_close(q, k, v, is_causal=True, bottom_right=True, variant=variant, dlse=dlse)


@pytest.mark.parametrize("variant", VARIANTS)
def test_bwd_non_contiguous(variant):
    q, k, v = make(2, 8, 2, 77, 91, 64, transposed=True)
    assert_bwd_close(q, k, v, is_causal=True, variant=variant, grads_strided=True)
    # non-unit innermost strides (every other element)
    qb, kb, vb = make(1, 4, 1, 30, 45, 32 * 2)
    assert_bwd_close(qb[..., ::2], kb[..., ::2], vb[..., ::2], variant=variant)


@pytest.mark.parametrize("variant", VARIANTS)
def test_bwd_threads_agree(variant):
    q, k, v = make(1, 8, 2, 200, 200, 64)
    dout = torch.randn(1, 8, 200, 64)
    one = run_bwd(q, k, v, dout, is_causal=True, variant=variant, nthreads=1)
    many = run_bwd(q, k, v, dout, is_causal=True, variant=variant, nthreads=3)
    for a, b in zip(one, many):
        assert torch.equal(a, b)


def test_bwd_variants_agree():
    q, k, v = make(1, 4, 2, 100, 120, 48)
    dout = torch.randn(1, 4, 100, 48)
    grads = [run_bwd(q, k, v, dout, is_causal=True, variant=name) for name in VARIANTS]
    for other in grads[1:]:
        for a, b in zip(grads[0], other):
            assert (a - b).abs().max() <= 1e-4 * max(1.0, a.abs().max().item())


@pytest.mark.parametrize("variant", VARIANTS)
def test_bwd_empty_sizes(variant):
    for Lq, Lk in ((0, 5), (5, 0)):
        q, k, v = make(1, 2, 1, Lq, Lk, 16)
        dq, dk, dv = run_bwd(q, k, v, torch.randn(1, 2, Lq, 16), variant=variant)
        assert (dq == 0).all() and (dk == 0).all() and (dv == 0).all()


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dims", [(1, 9), (7, 1), (9, 17), (33, 7)], ids=str)
def test_bwd_ragged_vector_tails(variant, dims):
    # Ragged D / Dv in pvt (dV, dK), pv (dQ) and the packed K^T / V^T, with key
    # counts around the vector width and kv blocks (64 keys) that end ragged.
    D, Dv = dims
    for lens in [(5, 1), (3, 9), (9, 7), (13, 70)]:
        q, k, v = make(1, 4, 2, *lens, D, Dv=Dv)
        assert_bwd_close(q, k, v, variant=variant)
        assert_bwd_close(q, k, v, is_causal=True, bottom_right=True, variant=variant)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("Lq,Lk,D", [(17, 113, 33), (1, 300, 64), (64, 64, 80)])
def test_key_with_strided_head_dim(variant, Lq, Lk, D):
    """K whose head dim is not contiguous ([B, H, D, L] memory viewed as [B, H, L, D]) takes every
    variant's element-wise K^T packing (pack_kt_strided); prefill and decode shapes, GQA."""
    q = torch.randn(2, 4, Lq, D)
    k = torch.randn(2, 2, D, Lk).transpose(-1, -2)
    v = torch.randn(2, 2, Lk, D)
    assert k.stride(-1) != 1
    assert_close(q, k, v, variant=variant)
    assert_close(q, k, v, is_causal=True, bottom_right=True, variant=variant)
