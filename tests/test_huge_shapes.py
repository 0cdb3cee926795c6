"""Huge shapes: index arithmetic is 64-bit end to end.

Two kinds of check, both within a 24 GB machine:
* views whose element offsets pass 2^31 (a huge row or batch stride over a
  large, mostly untouched allocation: only the pages holding the view's
  elements are ever written), so every kernel's offset math beyond int32 is
  exercised at small compute cost;
* one operand with more than 2^31 elements (int8_mm, 2.1 GB of int8), checked
  on sampled rows against an exact int64 reference, every C++ variant.
"""

import pytest
import torch

import llmaccel
from llmaccel.ops.int8_mm import int8_mm_cpp

MM_VARIANTS = llmaccel.cpu_info()["available_variants"].get("int8_mm", [])
ATTN_VARIANTS = llmaccel.cpu_info()["available_variants"].get("attention", [])
BIG = 2 ** 31 + 4096  # elements: offsets past int32


def _huge_stride_rows(rows, cols, dtype, gen):
    """[rows, cols] view with row stride ~2^31 / (rows - 1) elements, so the last row sits past 2^31."""
    stride = -(-BIG // max(rows - 1, 1))
    storage = torch.empty(stride * (rows - 1) + cols, dtype=dtype)  # untouched pages cost nothing
    view = storage.as_strided((rows, cols), (stride, 1))
    if dtype == torch.int8:
        view.copy_(torch.randint(-128, 128, (rows, cols), dtype=torch.int8, generator=gen))
    else:
        view.copy_(torch.randn(rows, cols, generator=gen))
    return view


def test_int8_mm_offsets_past_int32():
    gen = torch.Generator().manual_seed(0)
    a = _huge_stride_rows(3, 100, torch.int8, gen)
    b = torch.randint(-128, 128, (100, 7), dtype=torch.int8, generator=gen)
    ref = (a.long() @ b.long()).int()
    for v in MM_VARIANTS:
        assert torch.equal(int8_mm_cpp(a, b, v), ref), v
    assert torch.equal(llmaccel.int8_mm(a, b), ref)


def test_int8_linear_and_quantize_offsets_past_int32():
    gen = torch.Generator().manual_seed(1)
    x = _huge_stride_rows(3, 64, torch.float32, gen)
    w = torch.randint(-127, 128, (5, 64), dtype=torch.int8, generator=gen)
    s = torch.rand(5, generator=gen) * 0.01 + 1e-3
    for act in ("dynamic", "weight_only"):
        ref = llmaccel.int8_linear_reference(x.contiguous(), w, s, None, act)
        y = llmaccel.int8_linear(x, w, s, act=act)
        assert torch.allclose(y, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max())), act
    q, sc = llmaccel.quantize_per_token(x)
    q_ref, sc_ref = llmaccel.quantize_per_token_reference(x.contiguous())
    assert torch.equal(sc, sc_ref) and (q.int() - q_ref.int()).abs().max() <= 1


@pytest.mark.parametrize("variant", ATTN_VARIANTS)
def test_attention_offsets_past_int32(variant):
    """q, k, v with a batch stride past 2^31 floats (an 8.6 GB mostly-untouched allocation)."""
    from cpp_calls import attention_fwd_cpp

    gen = torch.Generator().manual_seed(2)
    B, H, L, D = 2, 2, 33, 16

    def big(L_):
        stride_b = -(-BIG // 1)
        storage = torch.empty(stride_b + H * L_ * D, dtype=torch.float32)
        t = storage.as_strided((B, H, L_, D), (stride_b, L_ * D, D, 1))
        t.copy_(torch.randn(B, H, L_, D, generator=gen))
        return t

    q, k, v = big(L), big(L + 5), big(L + 5)
    ref = torch.nn.functional.scaled_dot_product_attention(q.contiguous(), k.contiguous(), v.contiguous())
    out, _ = attention_fwd_cpp(q, k, v, False, variant, 2)
    assert torch.allclose(out, ref, atol=1e-5), variant
    del q, k, v


@pytest.mark.slow
def test_int8_mm_operand_over_2_pow_31_elements():
    """A real [M, K] int8 operand of 2^31 + 2^20 elements (2.1 GB), sampled rows exact.

    The best variant only: the strided-view tests above already drive every
    variant's offsets past 2^31, and the generic variant alone would take a
    minute of CI here."""
    gen = torch.Generator().manual_seed(3)
    K, N = 64, 8
    M = (2 ** 31 + 2 ** 20) // K
    # A cheap but row-varying fill: a random 4096-row block tiled, plus the row index mod 7 in column 0.
    block = torch.randint(-128, 128, (4096, K), dtype=torch.int8, generator=gen)
    a = block.repeat(-(-M // 4096), 1)[:M]
    a[:, 0] = (torch.arange(M) % 7 - 3).to(torch.int8)
    b = torch.randint(-128, 128, (K, N), dtype=torch.int8, generator=gen)
    rows = torch.cat([torch.arange(8), torch.randint(0, M, (48,), generator=gen), torch.arange(M - 8, M)])
    ref = (a[rows].long() @ b.long()).int()
    c = llmaccel.int8_mm(a, b)
    assert c.shape == (M, N)
    assert torch.equal(c[rows], ref)
