"""Determinism of every CPU op: bit-identical results for 1, 2 and N threads and across repeated calls.

A model served with a different thread count (or re-run to debug a
divergence) must give the same bits.  So no kernel may let the thread count
change its reduction order: work is partitioned by the problem's shape alone
(e.g. how many KV splits a decode step uses), and threads only take the
pieces.  Each ISA variant the CPU can run is checked through the raw
binding, and the public ops through ``torch.set_num_threads``.
"""

import pytest
import torch

import llmaccel
from llmaccel._ext import ext
from llmaccel.ops._cpp_views import view

from cpp_calls import attention_bwd_cpp, attention_fwd_cpp, int8_linear_dynamic_cpp, weight_only_cpp

INFO = llmaccel.cpu_info()
MM_VARIANTS = INFO["available_variants"].get("int8_mm", [])
WO_VARIANTS = INFO["available_variants"].get("int8_linear_weight_only", [])
ATTN_VARIANTS = INFO["available_variants"].get("attention", [])
THREADS = (1, 2, 3, 7)


def _bit_equal(a, b):
    """Same bits, NaN included (torch.equal says NaN != NaN)."""
    if a.dtype.is_floating_point:
        a, b = a.view(torch.int32) if a.dtype == torch.float32 else a, b.view(torch.int32) if b.dtype == torch.float32 else b
    return torch.equal(a, b)


def _same_for_every_thread_count(fn):
    first = fn(THREADS[0])
    for n in THREADS[1:] + (THREADS[0],):  # ... and the first count again: repeated calls
        again = fn(n)
        for i, (a, b) in enumerate(zip(first, again)):
            assert _bit_equal(a, b), f"output {i} differs between {THREADS[0]} and {n} threads"
    return first


@pytest.mark.parametrize("variant", MM_VARIANTS)
@pytest.mark.parametrize("M,K,N", [(1, 4096, 300), (7, 1000, 130), (64, 333, 257)])
def test_int8_linear_dynamic_threads(variant, M, K, N):
    x = torch.randn(M, K) * 2
    w = torch.randint(-127, 128, (N, K), dtype=torch.int8)
    s = torch.rand(N) * 0.01 + 1e-3
    b = torch.randn(N)
    _same_for_every_thread_count(lambda n: (int8_linear_dynamic_cpp(x, w, s, b, variant, n),))


@pytest.mark.parametrize("variant", ["generic"] + [v for v in ("avx2", "avx512vnni") if v in WO_VARIANTS])
@pytest.mark.parametrize("M,K,N", [(1, 4099, 300), (5, 1000, 130), (33, 257, 64)])
def test_int8_linear_weight_only_threads(variant, M, K, N):
    x = torch.randn(M, K)
    w = torch.randint(-127, 128, (N, K), dtype=torch.int8)
    s = torch.rand(N) * 0.01 + 1e-3
    b = torch.randn(N)
    _same_for_every_thread_count(lambda n: (weight_only_cpp(x, w, s, b, variant, n),))


def test_quantize_threads():
    x = torch.randn(257, 1000) * torch.logspace(-3, 3, 257)[:, None]
    q = torch.empty(257, 1000, dtype=torch.int8)
    sc = torch.empty(257)

    def run(n):
        ext().quantize_per_token(view(x), view(q), view(sc), n)
        return q.clone(), sc.clone()

    _same_for_every_thread_count(run)


# (B, Hq, Hkv, Lq, Lk, D, causal): prefill, GQA decode (the split-KV path, whose
# split count must not follow the thread count), few heads with long keys.
ATTN_SHAPES = [(1, 4, 2, 130, 130, 64, True), (1, 8, 2, 1, 3000, 64, False), (2, 2, 1, 3, 1500, 32, True),
               (1, 1, 1, 200, 900, 16, False)]


@pytest.mark.parametrize("variant", ATTN_VARIANTS)
@pytest.mark.parametrize("B,Hq,Hkv,Lq,Lk,D,causal", ATTN_SHAPES)
def test_attention_forward_threads(variant, B, Hq, Hkv, Lq, Lk, D, causal):
    q = torch.randn(B, Hq, Lq, D)
    k = torch.randn(B, Hkv, Lk, D)
    v = torch.randn(B, Hkv, Lk, D)
    _same_for_every_thread_count(lambda n: attention_fwd_cpp(q, k, v, causal, variant, n))


@pytest.mark.parametrize("variant", ATTN_VARIANTS)
@pytest.mark.parametrize("B,Hq,Hkv,Lq,Lk,D,causal", [(1, 4, 2, 130, 130, 64, True), (2, 2, 1, 33, 300, 16, False)])
def test_attention_backward_threads(variant, B, Hq, Hkv, Lq, Lk, D, causal):
    q = torch.randn(B, Hq, Lq, D)
    k = torch.randn(B, Hkv, Lk, D)
    v = torch.randn(B, Hkv, Lk, D)
    dout = torch.randn(B, Hq, Lq, D)
    out, lse = attention_fwd_cpp(q, k, v, causal, variant, 2)
    _same_for_every_thread_count(lambda n: attention_bwd_cpp(q, k, v, out, lse, dout, causal, variant, n))


def test_public_ops_threads():
    """The ops users call, through torch.set_num_threads (what a server changes)."""
    x = torch.randn(9, 700)
    w = torch.randint(-127, 128, (300, 700), dtype=torch.int8)
    s = torch.rand(300) * 0.01 + 1e-3
    q = torch.randn(1, 8, 1, 64)
    kv = torch.randn(1, 2, 2500, 64)
    a = torch.randint(-128, 128, (17, 700), dtype=torch.int8)
    dense = torch.randn(300, 700)
    nm = llmaccel.sparsity.NMPackedWeight.from_dense(dense, llmaccel.sparsity.prune(dense, "2:4"), "2:4")
    old = torch.get_num_threads()

    def run(n):
        torch.set_num_threads(n)
        try:
            return (llmaccel.int8_linear(x, w, s, act="dynamic"), llmaccel.int8_linear(x, w, s, act="weight_only"),
                    llmaccel.attention(q, kv, kv, enable_gqa=True), llmaccel.int8_mm(a, w.t()),
                    # 4 rows: below every machine's N:M crossover, so our kernel runs (past it, the expand route
                    # hands the product to MKL sgemm, whose sums depend on the thread count).
                    *llmaccel.quantize_per_token(x), llmaccel.sparse_linear(x[:4], *llmaccel.sparse_linear_fields(nm)))
        finally:
            torch.set_num_threads(old)

    _same_for_every_thread_count(run)
