"""The column-index form of a bitmap weight (``llmaccel.sparsity.cpu_bitmap_index``, the C++
``sparse_bitmap_index_linear``): the indices derived from the bitmap, the kernel on every ISA variant against
the float64 reference (odd shapes, every row-tile size, int8 values, empty and full rows, strided x and y,
extremes), bit-identical results for 1/2/3 threads, clamped corrupt indices, the cache, and bad input.
"""

import pytest
import torch

import llmaccel
from helpers import require_variant, variant_params
from cpp_calls import call_views
from llmaccel._ext import ext
from llmaccel.sparsity import BitmapWeight, prune, sparse_linear_reference
from llmaccel.sparsity.cpu_bitmap_index import (MAX_K, _cache, bitmap_index_linear_raw, cached_column_indices,
                                                column_indices)

VARIANTS = variant_params("sparse_bitmap")


def _variant(v):
    return require_variant("sparse_bitmap", v)


def _weight(N, K, sparsity, quantize=None, seed=0):
    """Row 0 fully pruned, the last row fully kept (when N > 1)."""
    g = torch.Generator().manual_seed(seed * 7919 + N * 31 + K)
    w = torch.randn(N, K, generator=g)
    w[w == 0] = 1.0
    mask = prune(w, "unstructured", sparsity=sparsity)
    if N > 1:
        mask[0] = False
        mask[-1] = True
    return BitmapWeight.from_dense(w, mask, quantize=quantize)


def _run(x, bw, bias, variant, nthreads=None):
    cols = column_indices(bw.bitmap, bw.row_offsets, bw.shape[1], bw.values.numel())
    if nthreads is None:
        return bitmap_index_linear_raw(x, cols, bw.values, bw.row_offsets, bw.scale, bias, variant)
    before = torch.get_num_threads()
    torch.set_num_threads(nthreads)
    try:
        return bitmap_index_linear_raw(x, cols, bw.values, bw.row_offsets, bw.scale, bias, variant)
    finally:
        torch.set_num_threads(before)


def _check(y, x, bw, bias, where):
    ref = sparse_linear_reference(x, bw, bias, dtype=torch.float64)
    mag = x.double().abs() @ bw.to_dense().double().abs().T + (bias.double().abs() if bias is not None else 0)
    err = (y.double() - ref).abs()
    assert y.shape == ref.shape and bool(torch.isfinite(y).all()), where
    assert bool((err <= 1e-5 * mag + bw.shape[1] * 2.0 ** -149).all()), f"{where}: worst {float(err.max()):.3g}"


def test_column_indices_follow_the_bitmap():
    bw = _weight(9, 70, 0.8)
    cols = column_indices(bw.bitmap, bw.row_offsets, 70, bw.values.numel())
    dense = bw.to_dense()
    for r in range(9):
        a, b = int(bw.row_offsets[r]), int(bw.row_offsets[r + 1])
        assert cols[a:b].to(torch.int64).tolist() == dense[r].nonzero().flatten().tolist()
    bad = bw.row_offsets.clone()
    bad[3] += 1
    with pytest.raises(ValueError, match=r"column_indices: row 2's bitmap sets \d+ bits but row_offsets gives it"):
        column_indices(bw.bitmap, bad, 70, bw.values.numel())
    with pytest.raises(ValueError, match=r"K = 65537 is above 65536"):
        column_indices(bw.bitmap, bw.row_offsets, MAX_K + 1, bw.values.numel())


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("quantize", [None, "int8"], ids=["fp32", "int8"])
def test_kernel_matches_float64(variant, quantize):
    variant = _variant(variant)
    for N, K, sparsity in ((1, 1, 0.5), (3, 17, 0.5), (17, 113, 0.9), (40, 1000, 0.9), (5, 4099, 0.95),
                           (33, 300, 0.3)):
        bw = _weight(N, K, sparsity, quantize)
        for M in (1, 2, 3, 4, 5, 9):
            x = torch.randn(M, K)
            for bias in (torch.randn(N), None):
                _check(_run(x, bw, bias, variant), x, bw, bias, f"{variant} {quantize} {N}x{K} M={M}")


@pytest.mark.parametrize("variant", VARIANTS)
def test_strides_extremes_threads_and_clamped_indices(variant):
    variant = _variant(variant)
    bw = _weight(37, 260, 0.85)
    base = torch.randn(6, 400)
    x = base[:, 100:360]  # row stride 400
    x[1] *= 1e30
    x[2] *= 1e-30
    _check(_run(x, bw, None, variant), x.contiguous(), bw, None, "strided, extremes")
    runs = [_run(x, bw, None, variant, nthreads=t) for t in (1, 2, 3)]
    assert all(torch.equal(runs[0], r) for r in runs[1:])
    # One x row: the AVX-512 unit walks rows in lockstep groups whose boundaries move with the thread count.
    runs = [_run(x[:1], bw, None, variant, nthreads=t) for t in (1, 2, 3)]
    assert all(torch.equal(runs[0], r) for r in runs[1:])
    # Corrupt indices (past K) are clamped to K - 1: a wrong answer, never a read outside x.
    cols = column_indices(bw.bitmap, bw.row_offsets, 260, bw.values.numel())
    corrupt = cols.to(torch.int32).clone()
    corrupt[::3] = 65535
    y = bitmap_index_linear_raw(x, corrupt.to(torch.uint16), bw.values, bw.row_offsets, None, None, variant)
    t = torch.arange(cols.numel())
    clamped = torch.where(t % 3 == 0, torch.tensor(259), cols.to(torch.int64))
    want = torch.zeros(6, 37, dtype=torch.float64)
    rows = torch.repeat_interleave(torch.arange(37), bw.row_offsets[1:] - bw.row_offsets[:-1])
    want.index_add_(1, rows, x.double()[:, clamped] * bw.values.double())
    assert torch.allclose(y.double(), want, rtol=1e-5, atol=1e-3)


def test_cache_is_per_bitmap_and_follows_in_place_edits():
    bw = _weight(8, 64, 0.9)
    a = cached_column_indices(bw.bitmap, bw.row_offsets, 64, bw.values.numel())
    assert cached_column_indices(bw.bitmap, bw.row_offsets, 64, bw.values.numel()) is a
    bw.bitmap.add_(0)  # an in-place edit bumps the version: rebuilt
    assert cached_column_indices(bw.bitmap, bw.row_offsets, 64, bw.values.numel()) is not a
    key = id(bw.bitmap)
    del bw
    assert key not in _cache


@pytest.mark.parametrize("over,msg", [
    (dict(K=65537), r"K = 65537 is above 65536"),
    (dict(**{"cols.addr": 0}), r"cols is a null pointer"),
    (dict(**{"row_offsets.addr": 0}), r"row_offsets is a null pointer"),
    (dict(**{"values.sizes": (-1,)}), r"values has a negative size \(-1\)"),
    (dict(variant="sse9"), r"unknown variant 'sse9'"),
    (dict(**{"y.strides": (2, 1)}), r"y rows overlap"),
])
def test_raw_binding_rejects_bad_arguments(over, msg):
    bw = _weight(5, 16, 0.5)
    cols = column_indices(bw.bitmap, bw.row_offsets, 16, bw.values.numel())
    x, y = torch.randn(2, 16), torch.empty(2, 5)
    tensors = dict(x=x, values=bw.values, cols=cols, row_offsets=bw.row_offsets, scale=None, bias=None, y=y)
    if "K" in over:
        tensors["x"] = torch.randn(2, over.pop("K"))
    with pytest.raises(ValueError, match=r"^llmaccel::sparse_bitmap_index_linear: " + msg):
        call_views("sparse_bitmap_index_linear", tensors, dict(nthreads=2, variant=""), **over)
    off = bw.row_offsets.clone()
    off[2] = off[3] + 1  # decreasing
    with pytest.raises(ValueError, match=r"row_offsets must be non-decreasing"):
        call_views("sparse_bitmap_index_linear", dict(tensors, x=x, row_offsets=off), dict(nthreads=2, variant=""))
