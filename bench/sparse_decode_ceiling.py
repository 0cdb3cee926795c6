#!/usr/bin/env python
"""Where single-token sparse decode stands against the machine's read bandwidth and dense fp32 (CPU).

    python bench/sparse_decode_ceiling.py [--formats 2:4 2:4-int8 2:4-w8a8 u50 u90 u90-index] [--rounds 30]

A decode step streams every compressed weight byte once, so no kernel can beat a plain sequential read of
those bytes.  For each format this script builds the ``decode-*`` stack of ``python -m llmaccel.bench --op
sparse_linear`` (8 chained 4096 x 4096 layers, beyond the LLC) and times, interleaved in a random order every
round (machine drift hits all alike):

* ``<variant>`` -- the C++ kernel straight through ``llmaccel._C`` for every variant this CPU runs (no Python
  dispatch): the kernel's own share of the ceiling;
* ``read``      -- ``llmaccel._C.stream_read`` over the same compressed buffers (values, index bits / bitmap /
  column indices): the ceiling;
* ``dense``     -- ``F.linear`` on the pruned weights stored dense in fp32 (the issue's peer).

Formats: ``2:4`` (fp32 values), ``2:4-int8`` (int8 values, fp32 x), ``2:4-w8a8`` (int8 values, x quantized per
token inside the kernel), ``u50`` / ``u90`` (unstructured, bitmap form), ``u90-index`` (the column-index form).
Prints GB/s of compressed bytes, the median per-round ratios kernel / read and dense time / kernel time.
"""

from __future__ import annotations

import argparse
import statistics

import torch

import llmaccel
from llmaccel.bench.timing import shuffled_rounds
from llmaccel._ext import ext
from llmaccel.ops._cpp_views import view, view_or_none
from llmaccel.bench.cases_sparse_linear import K, N, _stack


def _kernels(fmt: str, layers, nthreads: int):
    """(name -> fn() running the 8 layers, compressed bytes per pass, buffers to read) for one format."""
    from llmaccel.sparsity.cpu_bitmap_index import column_indices

    e = ext()
    fam = "sparse_nm" if fmt.startswith("2:4") else "sparse_bitmap"
    variants = llmaccel.cpu_info()["available_variants"][fam]
    x0 = torch.randn(1, K, generator=torch.Generator().manual_seed(1))
    bufs, calls = [], []
    for p, _, b in layers:
        if fmt.startswith("2:4"):
            vals, idx, sc = p.values.contiguous(), p.indices.contiguous(), p.scale
            bufs += [vals, idx]
            fn = e.sparse_nm_i8_linear if fmt == "2:4-w8a8" else e.sparse_nm_linear
            w_views = (view(vals), view(idx), view_or_none(sc), view(b))

            def call(x, y, v, fn=fn, w_views=w_views, keep=(vals, idx, sc, b)):
                fn(view(x), *w_views, view(y), 2, 4, nthreads, v)
        elif fmt == "u90-index":
            vals, off = p.values.contiguous(), p.row_offsets.contiguous()
            cols = column_indices(p.bitmap, off, K, vals.numel())
            bufs += [vals, cols]

            def call(x, y, v, w_views=(view(vals), view(cols), view(off), None, view(b)), keep=(vals, off, cols, b)):
                e.sparse_bitmap_index_linear(view(x), *w_views, view(y), nthreads, v)
        else:
            vals, off, bm = p.values.contiguous(), p.row_offsets.contiguous(), p.bitmap.contiguous()
            bufs += [vals, bm]

            def call(x, y, v, w_views=(view(vals), view(bm), view(off), None, view(b)), keep=(vals, off, bm, b)):
                e.sparse_bitmap_linear(view(x), *w_views, view(y), nthreads, v)
        calls.append(call)
    ys = [torch.empty(1, N) for _ in calls]

    def make(v):
        def run():
            x = x0
            for call, y in zip(calls, ys):
                call(x, y, v)
                x = y
            return x.clone()
        return run

    fns = {v: make(v) for v in variants}
    dense = [(w, b) for _, w, b in layers]

    def run_dense():
        x = x0
        for w, b in dense:
            x = torch.nn.functional.linear(x, w, b)
        return x

    fns["dense"] = run_dense
    fns["read"] = lambda: [e.stream_read(t.data_ptr(), t.numel() * t.element_size(), nthreads) for t in bufs]
    nbytes = sum(t.numel() * t.element_size() for t in bufs)
    ref = run_dense().double()
    for v in variants:
        got = fns[v]().double()
        rel = float((got - ref).norm() / ref.norm())
        tol = 5e-2 if fmt == "2:4-w8a8" else 1e-4
        assert rel <= tol, f"{fmt} variant {v}: relative error {rel:.3g} against dense (bound {tol})"
    return fns, nbytes, variants


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--formats", nargs="+", default=["2:4", "2:4-int8", "2:4-w8a8", "u50", "u90", "u90-index"])
    ap.add_argument("--rounds", type=int, default=30)
    args = ap.parse_args()
    nthreads = torch.get_num_threads()
    print(f"cpu variants: {llmaccel.cpu_info()['variants']}; {nthreads} threads")
    for fmt in args.formats:
        stack_fmt = {"2:4": "2:4", "2:4-int8": "2:4-int8", "2:4-w8a8": "2:4-int8", "u50": "unstructured:0.5",
                     "u90": "unstructured:0.9", "u90-index": "unstructured:0.9"}[fmt]
        layers = _stack(8, 20, K, N, stack_fmt)
        fns, nbytes, variants = _kernels(fmt, layers, nthreads)
        times = shuffled_rounds(fns, args.rounds, warmup=1)

        def ratio(a, b):  # median over rounds of time b / time a
            return statistics.median(tb / ta for ta, tb in zip(times[a], times[b]))

        print(f"{fmt}: 8 x {N}x{K}, {nbytes / 2**20:.0f} MiB compressed, M=1, {args.rounds} rounds")
        for k in fns:
            med = statistics.median(times[k])
            line = f"  {k:10s} {med * 1e3:7.3f} ms"
            if k != "dense":
                line += f"  {nbytes / med / 1e9:5.1f} GB/s compressed"
            if k in variants:
                line += f"   / read {ratio(k, 'read'):.2f}   dense / it {ratio(k, 'dense'):.2f}x"
            print(line)


if __name__ == "__main__":
    main()
