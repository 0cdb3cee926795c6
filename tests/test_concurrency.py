"""Concurrency: Python threads calling every op and module at once get the serial results.

The kernels release the GIL, so a server's request threads really run them
at the same time, each with its own OpenMP team.  Shared state is what can
break: the packed-weight cache (two threads packing the same weight on
first use) and module buffers.  The cache must also stay bounded: freeing a
weight frees its packed copy.
"""

import gc
import importlib
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor

import torch

import llmaccel

int8_linear_ops = importlib.import_module("llmaccel.ops.int8_linear")

N_THREADS = 4
ROUNDS = 6


def _bits(t):
    return t.view(torch.int32) if t.dtype == torch.float32 else t


def _workload():
    """(name, fn) pairs covering every public op and module; each fn returns a tensor."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(13, 300, generator=g)
    w = torch.randint(-127, 128, (257, 300), dtype=torch.int8, generator=g)
    s = torch.rand(257, generator=g) * 0.01 + 1e-3
    b = torch.randn(257, generator=g)
    a = torch.randint(-128, 128, (33, 300), dtype=torch.int8, generator=g)
    q = torch.randn(2, 4, 37, 32, generator=g)
    kv = torch.randn(2, 2, 61, 32, generator=g)
    dec_q = torch.randn(1, 8, 1, 64, generator=g)
    dec_kv = torch.randn(1, 2, 1500, 64, generator=g)
    lin = torch.nn.Linear(300, 129)
    qlin = llmaccel.nn.Int8Linear.from_linear(lin)
    mha = llmaccel.nn.MultiheadAttention(64, 4, batch_first=True).eval()
    tokens = torch.randn(3, 21, 64, generator=g)
    xg = torch.randn(5, 40, generator=g, requires_grad=True)
    lin_g = llmaccel.nn.Int8Linear.from_linear(torch.nn.Linear(40, 24))
    slin = llmaccel.nn.SparseLinear.from_linear(torch.nn.Linear(300, 129), "2:4")
    slin_q = llmaccel.nn.SparseLinear.from_linear(torch.nn.Linear(300, 129), "2:4", quantize="int8")
    wb = torch.randn(70, 300, generator=g)
    bitmap = llmaccel.sparsity.BitmapWeight.from_dense(wb, llmaccel.sparsity.prune(wb, "unstructured", sparsity=0.7))

    def grad_step():
        xg.grad = None
        lin_g(xg).square().sum().backward()
        return xg.grad.clone()

    return [
        ("int8_mm", lambda: llmaccel.int8_mm(a, w.t())),
        ("quantize_per_token", lambda: llmaccel.quantize_per_token(x)[0]),
        ("int8_linear dynamic", lambda: llmaccel.int8_linear(x, w, s, b, act="dynamic")),
        ("int8_linear weight_only", lambda: llmaccel.int8_linear(x, w, s, b, act="weight_only")),
        ("attention causal GQA", lambda: llmaccel.attention(q, kv, kv, is_causal=True, enable_gqa=True)),
        ("attention decode", lambda: llmaccel.attention(dec_q, dec_kv, dec_kv, enable_gqa=True)),
        ("Int8Linear", lambda: qlin(x)),
        ("SparseLinear 2:4", lambda: slin(x)),
        ("SparseLinear 2:4 int8", lambda: slin_q(x)),
        ("sparse_linear bitmap", lambda: llmaccel.sparse_linear(x, *llmaccel.sparse_linear_fields(bitmap))),
        ("MultiheadAttention", lambda: mha(tokens, tokens, tokens, need_weights=False)[0]),
        ("Int8Linear backward", grad_step),
    ]


def test_threads_get_serial_results():
    work = _workload()
    with torch.no_grad():
        serial = {name: fn() for name, fn in work if name != "Int8Linear backward"}
    serial["Int8Linear backward"] = dict(work)["Int8Linear backward"]()
    # Each thread runs every item several times, in a different order, so
    # different ops overlap.
    jobs = [(t, [work[(i + t) % len(work)] for i in range(len(work))] * ROUNDS) for t in range(N_THREADS)]
    start = threading.Barrier(N_THREADS)

    def run(job):
        _, items = job
        start.wait()
        out = []
        for name, fn in items:
            if name == "Int8Linear backward":
                continue  # .grad of a shared leaf is not thread-safe by design; run serially above
            with torch.no_grad():
                out.append((name, fn()))
        return out

    with ThreadPoolExecutor(N_THREADS) as pool:
        results = list(pool.map(run, jobs))
    checked = 0
    for out in results:
        for name, y in out:
            assert torch.equal(_bits(y), _bits(serial[name])), f"{name}: concurrent result differs from serial"
            checked += 1
    assert checked == N_THREADS * ROUNDS * (len(work) - 1)


def test_concurrent_first_use_packs_once_and_agrees():
    """Many threads hitting a fresh weight at once: one packed copy, every result equal."""
    x = torch.randn(7, 512)
    w = torch.randint(-127, 128, (1024, 512), dtype=torch.int8)
    s = torch.rand(1024) * 0.01 + 1e-3
    ref = llmaccel.int8_linear_reference(x, w, s, None, "dynamic")
    int8_linear_ops._packed_cache.pop(id(w), None)
    packs = []
    real_ext = int8_linear_ops.ext()
    real_pack = real_ext.int8_mm_pack_b

    class CountingExt:
        def __getattr__(self, name):
            return getattr(real_ext, name)

        def int8_mm_pack_b(self, *args):
            packs.append(1)
            return real_pack(*args)

    start = threading.Barrier(8)

    def call(_):
        start.wait()
        return llmaccel.int8_linear(x, w, s, act="dynamic")

    orig = int8_linear_ops.ext
    int8_linear_ops.ext = lambda: CountingExt()
    try:
        with ThreadPoolExecutor(8) as pool:
            outs = list(pool.map(call, range(8)))
    finally:
        int8_linear_ops.ext = orig
    assert len(packs) == 1, f"the weight was packed {len(packs)} times"
    for y in outs:
        assert torch.equal(y, outs[0])
    tol = (w.abs().sum(1).float() * s).max() * x.abs().amax(1).max() / 127 + 1e-5
    assert (outs[0] - ref).abs().max() <= tol


def test_packed_cache_is_bounded():
    """A freed weight frees its packed copy (the cache holds no strong reference to the weight)."""
    gc.collect()
    before = len(int8_linear_ops._packed_cache)
    x = torch.randn(2, 256)
    packed_refs = []
    for i in range(5):
        layer = llmaccel.nn.Int8Linear.from_linear(torch.nn.Linear(256, 512))
        with torch.no_grad():
            layer(x)
        w = layer.weight if isinstance(getattr(layer, "weight", None), torch.Tensor) else None
        hits = [v for v in int8_linear_ops._packed_cache.values() if w is not None and v[0]() is w]
        assert hits, "the layer's weight was not packed on first use"
        packed_refs.append(weakref.ref(hits[0][2]))
        del layer, w, hits
    gc.collect()
    assert len(int8_linear_ops._packed_cache) == before
    assert all(r() is None for r in packed_refs), "a packed copy outlived its weight"
