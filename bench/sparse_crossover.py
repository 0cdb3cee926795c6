"""Measures the crossovers of ``llmaccel/ops/sparse_linear_routes.py``: each C++ sparse route against dense
fp32 ``F.linear`` on the same pruned weights, over M (rows of x).

    python bench/sparse_crossover.py                      # every route this build has, the CPU's best variant
    python bench/sparse_crossover.py --routes bitmap90 index90 --ms 1 2 4 16   # bitmap vs column-index form
    LLMACCEL_CPU_ISA=generic python bench/sparse_crossover.py --routes nm

Conditions: 4 rotating 4096 x 4096 layers (4 x 64 MB dense fp32, beyond a 32 MB L3, as a model's layers
rotate), torch's thread count (set OMP_NUM_THREADS), 7 interleaved repetitions, median of the per-repetition
ratio dense time / route time (> 1: the route is faster).  Prints, per route, the largest M at which it still
beat dense: the ``CROSSOVER_M`` entry for this CPU variant.
"""
import argparse
import statistics
import time

import torch

import llmaccel
from llmaccel.ops.sparse_linear import _expanded_weight, _make_args
from llmaccel.sparsity import BitmapWeight, NMPackedWeight, prune
from llmaccel.sparsity.cpu_bitmap import bitmap_linear_raw
from llmaccel.sparsity.cpu_bitmap_index import bitmap_index_linear_raw, cached_column_indices
from llmaccel.sparsity.cpu_kernel import nm_linear_raw
from llmaccel.sparsity.cpu_nm_large import nm_large_linear_raw

K = N = 4096
MS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 128, 256, 512)


def _nm_kernel(x, p):
    return nm_linear_raw(x, p.values, p.indices, p.scale, None, p.n, p.m)


def _bitmap_kernel(x, p):
    return bitmap_linear_raw(x, p.bitmap, p.values, p.row_offsets, p.scale, None)


def _index_kernel(x, p):  # the column-index form (derived once per weight, cached)
    cols = cached_column_indices(p.bitmap, p.row_offsets, K, p.values.numel())
    return bitmap_index_linear_raw(x, cols, p.values, p.row_offsets, p.scale, None)


def _bitmap(sparsity):
    return lambda w: BitmapWeight.from_dense(w, prune(w, "unstructured", sparsity=sparsity))


def _expand(x, p):
    fields = llmaccel.sparse_linear_fields(p)
    return torch.nn.functional.linear(x, _expanded_weight(_make_args((x, *fields, None))))


# route -> (how to build a weight from dense w, the route's call, the family whose variant runs it)
ROUTES = {
    "nm": (lambda w: NMPackedWeight.from_dense(w, prune(w, "2:4"), "2:4"), _nm_kernel, "sparse_nm"),
    "nm_large": (lambda w: NMPackedWeight.from_dense(w, prune(w, "2:4"), "2:4"),
                 lambda x, p: nm_large_linear_raw(x, p.values, p.indices, p.scale, None, p.n, p.m), "sparse_nm_large"),
    "expand-nm": (lambda w: NMPackedWeight.from_dense(w, prune(w, "2:4"), "2:4"), _expand, None),
    "bitmap50": (_bitmap(0.5), _bitmap_kernel, "sparse_bitmap"),
    "bitmap90": (_bitmap(0.9), _bitmap_kernel, "sparse_bitmap"),
    "expand-bitmap90": (_bitmap(0.9), _expand, None),
    "index50": (_bitmap(0.5), _index_kernel, "sparse_bitmap"),
    "index70": (_bitmap(0.7), _index_kernel, "sparse_bitmap"),
    "index80": (_bitmap(0.8), _index_kernel, "sparse_bitmap"),
    "index90": (_bitmap(0.9), _index_kernel, "sparse_bitmap"),
    "bitmap70": (_bitmap(0.7), _bitmap_kernel, "sparse_bitmap"),
    "bitmap80": (_bitmap(0.8), _bitmap_kernel, "sparse_bitmap"),
}


def measure(route: str, ms=MS, reps: int = 7) -> dict[int, float]:
    build, call, _ = ROUTES[route]
    torch.manual_seed(0)
    ws = [torch.randn(N, K) / 64 for _ in range(4)]
    packs = [build(w) for w in ws]
    dense = [p.to_dense() for p in packs]
    out = {}
    for M in ms:
        x = torch.randn(M, K)
        ratios = []
        with torch.inference_mode():
            for _ in range(reps):
                t = time.perf_counter()
                for p in packs:
                    call(x, p)
                a = time.perf_counter() - t
                t = time.perf_counter()
                for d in dense:
                    torch.nn.functional.linear(x, d)
                b = time.perf_counter() - t
                ratios.append(b / a)
        out[M] = statistics.median(ratios)
        print(f"{route:16s} M={M:4d}  dense time / route time {out[M]:.2f}  (last rep: route {a * 1e3 / 4:.2f} ms, "
              f"dense {b * 1e3 / 4:.2f} ms per layer)", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--routes", nargs="*", default=list(ROUTES), choices=list(ROUTES))
    ap.add_argument("--ms", nargs="*", type=int, default=list(MS))
    args = ap.parse_args()
    info = llmaccel.cpu_info()
    print(f"threads {torch.get_num_threads()}, cpu_isa {info['cpu_isa'] or '(best)'}, variants {info['variants']}")
    for route in args.routes:
        ratios = measure(route, args.ms)
        wins = [m for m, r in ratios.items() if r > 1.0]
        print(f"==> {route}: beats dense up to M = {max(wins) if wins else 0} (ratios {ratios})", flush=True)


if __name__ == "__main__":
    main()
