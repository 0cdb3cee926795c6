"""kernels/attention.py (Triton fused attention forward) against a float64 reference.

Runs under TRITON_INTERPRET=1 on CPU tensors (or on a CUDA GPU). Shapes are kept small: the whole
file is meant to run in well under a minute under the interpreter.

Accuracy rule (FlashAttention's): with ref64 the float64 reference,

    max|ours - ref64| <= 2 * max|sdpa - ref64| + 1e-5

where sdpa is torch's scaled_dot_product_attention in the same dtype on the CPU. Rows with no
attended key must give exactly out = 0 and lse = -inf (they are excluded from the rule). lse is
compared with the float64 logsumexp of the (natural-log) scores.
"""

import math
import os

import pytest
import torch
import torch.nn.functional as F

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
HAS_CUDA = torch.cuda.is_available()

if not INTERPRET and not HAS_CUDA:
    pytest.skip("Triton kernels need TRITON_INTERPRET=1 or a CUDA GPU", allow_module_level=True)

from llmaccel.kernels.attention import attention_bwd, attention_fwd  # noqa: E402

DEVICE = "cpu" if INTERPRET else "cuda"
HEADS = [(2, 2), (4, 2), (4, 1)]
LENS = [(1, 1), (17, 17), (33, 33), (1, 70), (17, 40), (40, 17)]
DIMS = [16, 40, 64]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


# --------------------------------------------------------------------------
# references
# --------------------------------------------------------------------------

def causal_mask(Lq, Lk, bottom_right, device="cpu"):
    off = Lk - Lq if bottom_right else 0
    return torch.arange(Lk, device=device)[None, :] <= torch.arange(Lq, device=device)[:, None] + off


def reference64(q, k, v, mask=None, is_causal=False, bottom_right=False, scale=None):
    """softmax(q k^T * scale + mask) v in float64; masked-out entries -inf; fully masked rows -> 0."""
    q, k, v = q.double().cpu(), k.double().cpu(), v.double().cpu()
    group = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(group, dim=1)
    v = v.repeat_interleave(group, dim=1)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = (q @ k.transpose(-1, -2)) * scale
    if mask is not None:
        mask = mask.cpu()
        s = s.masked_fill(~mask, -math.inf) if mask.dtype == torch.bool else s + mask.double()
    if is_causal:
        s = s.masked_fill(~causal_mask(s.shape[-2], s.shape[-1], bottom_right), -math.inf)
    lse = torch.logsumexp(s, dim=-1)
    p = torch.softmax(s, dim=-1).nan_to_num(0.0)  # fully masked rows: NaN -> 0
    return p @ v, lse


def sdpa_same_dtype(q, k, v, mask=None, is_causal=False, bottom_right=False, scale=None):
    """torch SDPA in q's dtype on the CPU (bottom-right causal as an explicit bool mask)."""
    q, k, v = q.cpu(), k.cpu(), v.cpu()
    mask = None if mask is None else mask.cpu()
    if is_causal and (bottom_right or mask is not None):
        cm = causal_mask(q.shape[2], k.shape[2], bottom_right)
        if mask is None:
            mask = cm
        elif mask.dtype == torch.bool:
            mask = mask & cm
        else:
            mask = mask.masked_fill(~cm, -math.inf)
        is_causal = False
    if mask is not None and mask.dtype != torch.bool:
        mask = mask.to(q.dtype)
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, is_causal=is_causal, scale=scale, enable_gqa=q.shape[1] != k.shape[1])


def check(q, k, v, mask=None, is_causal=False, bottom_right=False, scale=None, split_kv=None):
    out, lse = attention_fwd(q, k, v, mask, is_causal, bottom_right, scale, split_kv=split_kv)
    B, Hq, Lq, _ = q.shape
    Dv = v.shape[-1]
    assert out.shape == (B, Hq, Lq, Dv) and out.dtype == q.dtype and out.device == q.device
    assert lse.shape == (B, Hq, Lq) and lse.dtype == torch.float32 and lse.is_contiguous()
    out, lse = out.cpu(), lse.cpu()
    assert not torch.isnan(out).any() and not torch.isnan(lse).any()

    ref, ref_lse = reference64(q, k, v, mask, is_causal, bottom_right, scale)
    dead = torch.isinf(ref_lse)  # rows with no attended key
    live = ~dead

    # fully masked rows: out exactly 0, lse -inf
    assert (out[dead] == 0).all(), "fully masked rows must give 0"
    assert (lse[dead] == -math.inf).all(), "fully masked rows must give lse = -inf"

    if live.any():
        sdpa = sdpa_same_dtype(q, k, v, mask, is_causal, bottom_right, scale)
        err = (out.double() - ref)[live].abs().max().item()
        sdpa_err = (sdpa.double() - ref)[live].abs().max().item()
        assert not math.isnan(sdpa_err)
        assert err <= 2 * sdpa_err + 1e-5, f"max err {err:.3g} vs 2 * sdpa err {sdpa_err:.3g} + 1e-5"
        lse_err = (lse.double() - ref_lse)[live].abs()
        lse_tol = 1e-5 * (1.0 + ref_lse[live].abs()) + 2e-6 * ref_lse[live].abs().max()
        assert (lse_err <= lse_tol).all(), f"lse max err {lse_err.max().item():.3g}"
    return out, lse


def randn(*shape, dtype=torch.float32, scale=1.0):
    return (torch.randn(*shape, dtype=torch.float32) * scale).to(dtype).to(DEVICE)


def make_qkv(B, Hq, Hkv, Lq, Lk, D, dtype, Dv=None, mag=1.0):
    Dv = D if Dv is None else Dv
    return (randn(B, Hq, Lq, D, dtype=dtype, scale=mag), randn(B, Hkv, Lk, D, dtype=dtype, scale=mag),
            randn(B, Hkv, Lk, Dv, dtype=dtype, scale=mag))


def _cases():
    """Every (Lq, Lk) and dtype; batch, heads and head dim cycle so each value meets several lengths."""
    i = 0
    for (Lq, Lk) in LENS:
        for dtype in DTYPES:
            yield pytest.param(1 + i % 2, *HEADS[i % 3], Lq, Lk, DIMS[(i // 2) % 3], dtype,
                               id=f"B{1 + i % 2}-H{HEADS[i % 3]}-L{Lq}x{Lk}-D{DIMS[(i // 2) % 3]}-{str(dtype)[6:]}")
            i += 1


# --------------------------------------------------------------------------
# tests
# --------------------------------------------------------------------------

@pytest.mark.triton
@pytest.mark.parametrize("B,Hq,Hkv,Lq,Lk,D,dtype", list(_cases()))
def test_matches_reference(B, Hq, Hkv, Lq, Lk, D, dtype):
    check(*make_qkv(B, Hq, Hkv, Lq, Lk, D, dtype))


@pytest.mark.triton
@pytest.mark.parametrize("bottom_right", [False, True], ids=["top_left", "bottom_right"])
@pytest.mark.parametrize("Lq,Lk", [(17, 17), (33, 33), (1, 70), (17, 40), (40, 17)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_causal(Lq, Lk, bottom_right, dtype):
    # (40, 17) bottom-right: the first 23 query rows attend nothing (out 0, lse -inf).
    check(*make_qkv(2, 4, 2, Lq, Lk, 40, dtype), is_causal=True, bottom_right=bottom_right)


@pytest.mark.triton
@pytest.mark.parametrize("Hq,Hkv", HEADS)
@pytest.mark.parametrize("D", DIMS)
def test_heads_and_dims(Hq, Hkv, D):
    check(*make_qkv(2, Hq, Hkv, 17, 33, D, torch.float32), is_causal=True, bottom_right=True)


@pytest.mark.triton
@pytest.mark.parametrize("D,Dv", [(80, 80), (96, 96), (112, 112), (256, 256), (40, 24), (16, 72)])
def test_padded_head_dims(D, Dv):
    check(*make_qkv(1, 2, 1, 5, 21, D, torch.float32, Dv=Dv), is_causal=True, bottom_right=True)


@pytest.mark.triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_non_contiguous_views(dtype):
    B, Hq, Hkv, Lq, Lk, D = 2, 4, 2, 17, 33, 40
    # [B, L, H, D] storage read as [B, H, L, D]
    q = randn(B, Lq, Hq, D, dtype=dtype).transpose(1, 2)
    k = randn(B, Lk, Hkv, D, dtype=dtype).transpose(1, 2)
    # strided head dim, storage offset, and V in a [D, L]-major layout
    v = randn(B, Hkv, D + 1, 2 * Lk, dtype=dtype)[:, :, 1:, ::2].transpose(2, 3)
    assert not (q.is_contiguous() or k.is_contiguous() or v.is_contiguous())
    check(q, k, v)
    check(q, k, v, is_causal=True, bottom_right=True)
    qs = randn(B, Hq, Lq, 2 * D, dtype=dtype)[..., ::2]  # stride 2 on D
    check(qs, k, v, is_causal=True)


def _bool_mask(B, Hq, Lq, Lk, p=0.7):
    m = torch.rand(B, Hq, Lq, Lk) < p
    m[0, 0, min(3, Lq - 1)] = False  # a fully masked row
    return m.to(DEVICE)


def _float_mask(B, Hq, Lq, Lk, dtype):
    m = torch.randn(B, Hq, Lq, Lk) * 2.0
    m[torch.rand(B, Hq, Lq, Lk) < 0.3] = -math.inf
    m[-1, -1, min(2, Lq - 1)] = -math.inf  # a fully masked row
    return m.to(dtype).to(DEVICE)


@pytest.mark.triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", ["bool", "float", "bool_bcast_q", "float_bcast_bh", "key_padding", "mask_2d",
                                  "float32_mask"])
def test_masks(kind, dtype):
    B, Hq, Hkv, Lq, Lk, D = 2, 4, 2, 17, 40, 16
    q, k, v = make_qkv(B, Hq, Hkv, Lq, Lk, D, dtype)
    if kind == "bool":
        mask = _bool_mask(B, Hq, Lq, Lk)
    elif kind == "float":
        mask = _float_mask(B, Hq, Lq, Lk, dtype)
    elif kind == "float32_mask":  # float mask of another dtype than q
        mask = _float_mask(B, Hq, Lq, Lk, torch.float32)
    elif kind == "bool_bcast_q":  # [B, Hq, 1, Lk] expanded over the queries (head (0, 0) sees nothing)
        mask = _bool_mask(B, Hq, 1, Lk, p=0.5).expand(B, Hq, Lq, Lk)
    elif kind == "float_bcast_bh":  # [1, 1, Lq, Lk] expanded over batch and heads
        mask = _float_mask(1, 1, Lq, Lk, dtype).expand(B, Hq, Lq, Lk)
    elif kind == "key_padding":  # [B, 1, 1, Lk], batch 1 pads out everything (fully masked rows)
        mask = torch.ones(B, 1, 1, Lk, dtype=torch.bool)
        mask[0, ..., 30:] = False
        mask[1] = False
        mask = mask.to(DEVICE).expand(B, Hq, Lq, Lk)
    else:  # 2-D [Lq, Lk], not expanded (broadcast strides are derived by the launcher)
        mask = _bool_mask(1, 1, Lq, Lk)[0, 0]
    check(q, k, v, mask)


@pytest.mark.triton
@pytest.mark.parametrize("bottom_right", [False, True])
def test_mask_with_causal(bottom_right):
    # The op layer refuses mask + is_causal (like SDPA); the kernel combines them.
    B, Hq, Hkv, Lq, Lk, D = 1, 4, 1, 33, 40, 16
    q, k, v = make_qkv(B, Hq, Hkv, Lq, Lk, D, torch.float32)
    check(q, k, v, _bool_mask(B, Hq, Lq, Lk), is_causal=True, bottom_right=bottom_right)
    check(q, k, v, _float_mask(B, Hq, Lq, Lk, torch.float32), is_causal=True, bottom_right=bottom_right)


@pytest.mark.triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("causal", [False, True])
def test_large_magnitude(dtype, causal):
    # x50 inputs: near one-hot softmax, logits in the thousands; the online max must keep it exact.
    check(*make_qkv(2, 4, 2, 17, 40, 64, dtype, mag=50.0), is_causal=causal, bottom_right=True)


@pytest.mark.triton
def test_scale():
    q, k, v = make_qkv(1, 2, 2, 17, 33, 40, torch.float32)
    check(q, k, v, scale=0.5)
    check(q, k, v, scale=3.0, is_causal=True)


@pytest.mark.triton
@pytest.mark.parametrize("B,Hq,Hkv,Lq,Lk,split_kv,dtype", [
    (2, 4, 1, 1, 70, 2, torch.float32),
    (1, 4, 1, 1, 70, 3, torch.float16),
    (2, 4, 2, 4, 100, 3, torch.float16),
    (1, 4, 2, 4, 100, 2, torch.float32),
    (1, 2, 2, 17, 40, 2, torch.float16),  # Lq > BLOCK_M: several query blocks, each split
])
def test_split_kv(B, Hq, Hkv, Lq, Lk, split_kv, dtype):
    q, k, v = make_qkv(B, Hq, Hkv, Lq, Lk, 40, dtype)
    out, lse = check(q, k, v, split_kv=split_kv)
    out1, lse1 = attention_fwd(q, k, v, None, False, False, None, split_kv=1)
    tol = 1e-5 if dtype == torch.float32 else 2e-3
    torch.testing.assert_close(out.float(), out1.cpu().float(), atol=tol, rtol=tol)
    torch.testing.assert_close(lse, lse1.cpu(), atol=1e-5, rtol=1e-5)
    check(q, k, v, is_causal=True, bottom_right=True, split_kv=split_kv)


@pytest.mark.triton
def test_split_kv_masks_and_empty_splits():
    B, Hq, Hkv, Lq, Lk, D = 2, 4, 2, 3, 70, 16
    q, k, v = make_qkv(B, Hq, Hkv, Lq, Lk, D, torch.float32)
    check(q, k, v, _bool_mask(B, Hq, Lq, Lk), split_kv=3)  # incl. a fully masked row
    mask = torch.ones(B, 1, 1, Lk, dtype=torch.bool)
    mask[0, ..., :50] = False  # only the last split sees keys for batch 0
    mask[1] = False  # batch 1: nothing attended in any split
    check(q, k, v, mask.to(DEVICE).expand(B, Hq, Lq, Lk), split_kv=3)
    check(q, k, v, _float_mask(B, Hq, Lq, Lk, torch.float32), split_kv=2)
    # more splits than key blocks: trailing splits are empty; and causal ranges shorter than Lk
    check(q, k, v, split_kv=8)
    check(q, k, v, is_causal=True, bottom_right=False, split_kv=3)  # rows attend <= 3 keys


@pytest.mark.triton
def test_bf16_split_and_causal():
    q, k, v = make_qkv(1, 4, 1, 2, 70, 40, torch.bfloat16)
    check(q, k, v, is_causal=True, bottom_right=True, split_kv=2)


@pytest.mark.triton
def test_empty_sizes():
    q, k, v = make_qkv(2, 2, 1, 0, 5, 16, torch.float32)
    out, lse = attention_fwd(q, k, v, None, False, False, None)
    assert out.shape == (2, 2, 0, 16) and lse.shape == (2, 2, 0)
    q, k, v = make_qkv(0, 2, 1, 3, 5, 16, torch.float16)
    out, lse = attention_fwd(q, k, v, None, True, False, None)
    assert out.shape == (0, 2, 3, 16) and out.dtype == torch.float16
    # Lk == 0: every row attends nothing
    q, k, v = make_qkv(2, 2, 1, 3, 0, 16, torch.float32)
    out, lse = attention_fwd(q, k, v, None, False, False, None)
    assert (out == 0).all() and (lse == -math.inf).all()
    # Dv == 0: empty output, lse still computed
    q, k, _ = make_qkv(1, 2, 2, 3, 5, 16, torch.float32)
    v = randn(1, 2, 5, 0)
    out, lse = attention_fwd(q, k, v, None, False, False, None)
    assert out.shape == (1, 2, 3, 0)
    _, ref_lse = reference64(q, k, randn(1, 2, 5, 1))
    torch.testing.assert_close(lse.cpu().double(), ref_lse, atol=1e-5, rtol=1e-5)


@pytest.mark.triton
def test_bad_arguments():
    q, k, v = make_qkv(1, 3, 2, 3, 5, 16, torch.float32)
    with pytest.raises(ValueError, match="multiple of Hkv"):
        attention_fwd(q, k, v, None, False, False, None)
    q, k, v = make_qkv(1, 2, 2, 3, 5, 16, torch.float32)
    with pytest.raises(ValueError, match="broadcast"):
        attention_fwd(q, k, v, torch.ones(3, 4, dtype=torch.bool, device=DEVICE), False, False, None)
    with pytest.raises(ValueError, match="split_kv"):
        attention_fwd(q, k, v, None, False, False, None, split_kv=0)


# --------------------------------------------------------------------------
# backward (attention_bwd)
# --------------------------------------------------------------------------

def _grads(fn, leaves, dout, dlse=None):
    """Gradients of sum(out * dout) (+ sum(lse * dlse)) w.r.t. leaves, through autograd of fn."""
    leaves = [t.detach().clone().requires_grad_(True) for t in leaves]
    res = fn(*leaves)
    out, lse = res if isinstance(res, tuple) else (res, None)
    loss = (out * dout.to(out.dtype)).sum()
    if dlse is not None:
        loss = loss + (lse.nan_to_num(0.0, 0.0, 0.0) * dlse.to(lse.dtype)).sum()
    loss.backward()
    return [t.grad for t in leaves]


def check_bwd(q, k, v, mask=None, is_causal=False, bottom_right=False, scale=None, dlse=None):
    """attention_bwd against float64 autograd of reference64 (FlashAttention's rule, as check())."""
    out, lse = attention_fwd(q, k, v, mask, is_causal, bottom_right, scale)
    dout = randn(*out.shape, dtype=q.dtype)
    grads = attention_bwd(q, k, v, mask, is_causal, bottom_right, scale, out, lse, dout, dlse)
    for g, t in zip(grads, (q, k, v)):
        assert g.shape == t.shape and g.dtype == t.dtype and g.device == t.device
    grads = [g.cpu() for g in grads]
    assert not any(torch.isnan(g).any() for g in grads)

    cpu = [t.cpu() for t in (q, k, v)]
    m_cpu = None if mask is None else mask.cpu()
    dout_c = dout.cpu()
    ref = _grads(lambda a, b, c: reference64(a, b, c, m_cpu, is_causal, bottom_right, scale),
                 [t.double() for t in cpu], dout_c.double(), None if dlse is None else dlse.cpu().double())
    _, ref_lse = reference64(*cpu, m_cpu, is_causal, bottom_right, scale)
    dead = torch.isinf(ref_lse)
    assert (grads[0][dead] == 0).all(), "fully masked rows must give dq = 0"

    if dlse is not None:  # SDPA has no lse output: plain tolerance (fp32 callers only)
        for name, g, r in zip("qkv", grads, ref):
            err = (g.double() - r).abs().max().item()
            assert err <= 1e-5 * (1 + r.abs().max().item()), f"d{name} err {err:.3g}"
        return grads
    # SDPA baseline in the same dtype; rows with no attended key attend everything there instead (SDPA
    # would give NaN) with dout = 0: they then contribute exactly nothing to dk, dv; their dq is not compared.
    sm = m_cpu
    if dead.any():
        sm = (m_cpu if m_cpu is not None else causal_mask(q.shape[2], k.shape[2], bottom_right)
              .expand(dead.shape + (k.shape[2],))) | dead[..., None]
    base = _grads(lambda a, b, c: sdpa_same_dtype(a, b, c, sm, is_causal and sm is None, bottom_right, scale),
                  cpu, dout_c.masked_fill(dead[..., None], 0))
    live = ~dead
    for name, g, r, s in zip("qkv", grads, ref, base):
        sel = live if name == "q" else slice(None)
        err = (g.double() - r)[sel].abs().max().item()
        sdpa_err = (s.double() - r)[sel].abs().max().item()
        assert not math.isnan(sdpa_err)
        assert err <= 2 * sdpa_err + 1e-5, f"d{name}: max err {err:.3g} vs 2 * sdpa err {sdpa_err:.3g} + 1e-5"
    return grads


@pytest.mark.triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("Hq,Hkv", [(2, 2), (4, 1)])
@pytest.mark.parametrize("Lq,Lk,D", [(1, 33, 16), (17, 17, 40), (33, 17, 16), (17, 33, 40)])
def test_bwd_matches_reference(Lq, Lk, D, Hq, Hkv, dtype):
    check_bwd(*make_qkv(2, Hq, Hkv, Lq, Lk, D, dtype))


@pytest.mark.triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("bottom_right", [False, True], ids=["top_left", "bottom_right"])
@pytest.mark.parametrize("Lq,Lk", [(1, 33), (17, 33), (33, 17)])
def test_bwd_causal(Lq, Lk, bottom_right, dtype):
    # (33, 17) bottom-right: the first 16 query rows attend nothing (dq exactly 0 there).
    check_bwd(*make_qkv(1, 4, 1, Lq, Lk, 40, dtype), is_causal=True, bottom_right=bottom_right)


@pytest.mark.triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_bwd_bool_mask(dtype):
    B, Hq, Hkv, Lq, Lk, D = 2, 4, 2, 17, 33, 16
    q, k, v = make_qkv(B, Hq, Hkv, Lq, Lk, D, dtype)
    mask = _bool_mask(B, Hq, Lq, Lk)  # row 3 of (0, 0) fully masked
    dq, _, _ = check_bwd(q, k, v, mask)
    assert (dq[0, 0, 3] == 0).all()
    # broadcast (stride-0) mask: [B, 1, 1, Lk] key padding, batch 1 fully masked
    kp = torch.ones(B, 1, 1, Lk, dtype=torch.bool)
    kp[0, ..., 20:] = False
    kp[1] = False
    dq, dk, dv = check_bwd(q, k, v, kp.to(DEVICE).expand(B, Hq, Lq, Lk))
    assert (dq[1] == 0).all() and (dk[1] == 0).all() and (dv[1] == 0).all()
    assert (dk[0, :, 20:] == 0).all() and (dv[0, :, 20:] == 0).all()


@pytest.mark.triton
def test_bwd_dlse_and_views():
    B, Hq, Hkv, Lq, Lk, D = 2, 4, 2, 17, 33, 40
    q = randn(B, Lq, Hq, D).transpose(1, 2)  # [B, L, H, D] storage
    k = randn(B, Lk, Hkv, D).transpose(1, 2)
    v = randn(B, Hkv, Lk, 2 * D)[..., ::2]
    dlse = randn(B, Hq, Lq)
    check_bwd(q, k, v, dlse=dlse)
    check_bwd(q, k, v, is_causal=True, bottom_right=True, dlse=dlse, scale=0.3)


@pytest.mark.triton
def test_bwd_empty():
    q, k, v = make_qkv(1, 2, 1, 3, 0, 16, torch.float32)
    out, lse = attention_fwd(q, k, v, None, False, False, None)
    dq, dk, dv = attention_bwd(q, k, v, None, False, False, None, out, lse, torch.ones_like(out))
    assert (dq == 0).all() and dk.shape == k.shape and dv.shape == v.shape


@pytest.mark.triton
def test_op_backward_uses_triton(monkeypatch):
    """llmaccel.attention's backward runs attention_bwd for the triton backend (bool mask, no dropout)."""
    import llmaccel
    from llmaccel import backends
    import llmaccel.kernels.attention as kmod

    calls = []
    real = kmod.attention_bwd

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(kmod, "attention_bwd", spy)
    q0, k0, v0 = make_qkv(1, 4, 2, 17, 33, 16, torch.float32)
    mask = _bool_mask(1, 4, 17, 33)
    leaves = [t.clone().requires_grad_(True) for t in (q0, k0, v0)]
    with backends.use("triton"):
        out = llmaccel.attention(*leaves, attn_mask=mask, enable_gqa=True)
        out.backward(torch.ones_like(out))
    assert calls == [1]
    ref = _grads(lambda a, b, c: reference64(a, b, c, mask.cpu()), [t.cpu().double() for t in (q0, k0, v0)],
                 torch.ones(out.shape, dtype=torch.float64))
    for t, r in zip(leaves, ref):
        assert (t.grad.cpu().double() - r).abs().max() <= 1e-5
    # a float mask needs its gradient: the plain-PyTorch backward runs instead
    fm = torch.zeros(1, 4, 17, 33, device=DEVICE, requires_grad=True)
    with backends.use("triton"):
        out = llmaccel.attention(*[t.detach() for t in (q0, k0, v0)], attn_mask=fm, enable_gqa=True)
        out.sum().backward()
    assert calls == [1] and fm.grad is not None
