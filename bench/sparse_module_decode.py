#!/usr/bin/env python
"""Decode through the modules users swap in: ``SparseLinear`` 2:4 W8A8 against ``Int8Linear`` W8A8 and fp32.

    python bench/sparse_module_decode.py [--layers 8] [--dim 4096] [--rounds 20]

One token (M = 1) through ``--layers`` chained ``dim x dim`` layers, three ways on the same 2:4-pruned
weights: ``SparseLinear.from_linear(pattern="2:4", quantize="int8", act="dynamic")``, ``Int8Linear`` (W8A8,
``act="dynamic"``) on the pruned weight stored dense, and fp32 ``nn.Linear`` on it.  The modules' whole
call path is timed (what a model pays per layer), not the bare kernels (``python -m llmaccel.bench --op
sparse_linear`` times the ops).  Rounds are interleaved (the order rotating) and the median of all but the first 3 is reported,
with the ratios; at the default size the weights (84 / 134 / 512 MB) are far beyond the last-level cache.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--dim", type=int, default=4096)
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    from llmaccel.nn import Int8Linear, SparseLinear

    torch.manual_seed(0)
    sparse, dense = [], []
    for _ in range(args.layers):
        s = SparseLinear.from_linear(nn.Linear(args.dim, args.dim), "2:4", quantize="int8", act="dynamic")
        d = nn.Linear(args.dim, args.dim)
        with torch.no_grad():
            d.weight.copy_(s.to_dense())
            d.bias.copy_(s.bias)
        sparse.append(s)
        dense.append(d)
    int8 = [Int8Linear.from_linear(d, act="dynamic") for d in dense]
    stacks = {"SparseLinear 2:4 W8A8": sparse, "Int8Linear W8A8 (dense)": int8, "nn.Linear fp32 (dense)": dense}
    x = torch.randn(1, args.dim)
    times = {k: [] for k in stacks}
    with torch.inference_mode():
        names = list(stacks)
        for r in range(args.rounds):
            # The order rotates each round: the stack timed right after the 512 MB fp32 one finds the memory
            # system still busy, so no stack may always follow it.
            for name in names[r % 3:] + names[:r % 3]:
                mods = stacks[name]
                t = time.perf_counter()
                y = x
                for m in mods:
                    y = m(y)
                times[name].append(time.perf_counter() - t)
    med = {k: statistics.median(v[3:]) for k, v in times.items()}
    print(f"M=1 through {args.layers} x ({args.dim} x {args.dim}) layers, {torch.get_num_threads()} threads, "
          f"median of {args.rounds - 3} interleaved rounds")
    for k, v in med.items():
        print(f"  {k:<26} {v * 1e3:8.2f} ms")
    s = med["SparseLinear 2:4 W8A8"]
    print(f"  sparse vs dense W8A8 {med['Int8Linear W8A8 (dense)'] / s:.2f}x, vs fp32 {med['nn.Linear fp32 (dense)'] / s:.2f}x")


if __name__ == "__main__":
    main()
