#!/usr/bin/env python
"""Where single-token int8 decode stands against the machine's read bandwidth (CPU).

    python bench/decode_ceiling.py [--rounds 40]

A decode step reads every int8 weight byte once, so no kernel can beat a
plain sequential read of those bytes.  This script times, interleaved in a
random order every round (so machine drift hits all four alike), one token
through the same 8 chained 4096 x 4096 layers as the ``decode-*`` cases of
``python -m llmaccel.bench`` (128 MB of int8 weights, beyond the LLC):

* ``llmaccel``  -- ``llmaccel.int8_linear`` per layer (what a user calls);
* ``kernel``    -- the same C++ kernel called straight through ``llmaccel._C``
  (no Python dispatch): the kernel's own share of the ceiling;
* ``torch.ao``  -- ``quantize_dynamic`` int8 Linear (fbgemm), same weights;
* ``read``      -- ``llmaccel._C.stream_read`` over the packed weight buffers
  the kernel streams: the ceiling.

It prints GB/s of int8 weight for each (medians) and the medians of the
per-round ratios, including what "1.5x torch.ao" would require as a share of
the read ceiling (above 1.0 means no kernel can reach it on this machine in
that state).
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import warnings

import torch

import llmaccel
from llmaccel.bench.timing import shuffled_rounds
from llmaccel._ext import ext
from llmaccel.ops._cpp_views import view
from llmaccel.bench.cases_int8_linear import K, N, _stack

linear_ops = importlib.import_module("llmaccel.ops.int8_linear")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=40)
    args = ap.parse_args()

    layers = _stack(8, seed=10)
    x = torch.randn(1, K, generator=torch.Generator().manual_seed(1))
    packed = [linear_ops.packed_weight_cpp(wq) for _, _, wq, _ in layers]
    nthreads = torch.get_num_threads()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notice
        seq = torch.nn.Sequential(*[torch.nn.Linear(K, N) for _ in layers])
        with torch.no_grad():
            for lin, (w, b, _, _) in zip(seq, layers):
                lin.weight.copy_(w)
                lin.bias.copy_(b)
        ao = torch.ao.quantization.quantize_dynamic(seq, {torch.nn.Linear}, dtype=torch.qint8)

    def ours():
        y = x
        for _, b, wq, s in layers:
            y = llmaccel.int8_linear(y, wq, s, b)
        return y

    def kernel():
        y = x
        for (_, b, wq, s), p in zip(layers, packed):
            out = torch.empty(1, N)
            ext().int8_linear_dynamic(view(y), view(wq), view(p), view(s), view(b), view(out), nthreads)
            y = out
        return y

    def peer_ao():
        with torch.no_grad():
            return ao(x)

    def read():
        return [ext().stream_read(p.data_ptr(), p.numel(), nthreads) for p in packed]

    assert torch.equal(ours(), kernel()), "the op and the direct kernel call disagree"
    fns = {"llmaccel": ours, "kernel": kernel, "torch.ao": peer_ao, "read": read}
    times = shuffled_rounds(fns, args.rounds, warmup=3)

    nbytes = 8 * N * K
    print(f"8 x {N}x{K} int8 layers ({nbytes / 2**20:.0f} MiB), M=1, {nthreads} threads, {args.rounds} rounds")
    for k, v in times.items():
        print(f"  {k:9s} {statistics.median(v) * 1e3:7.3f} ms  {nbytes / statistics.median(v) / 1e9:5.1f} GB/s")

    def ratio(a, b):  # median over rounds of (rate a / rate b) = time b / time a
        return statistics.median(tb / ta for ta, tb in zip(times[a], times[b]))

    print(f"  llmaccel / torch.ao          {ratio('llmaccel', 'torch.ao'):.2f}x")
    print(f"  llmaccel / read ceiling      {ratio('llmaccel', 'read'):.2f}")
    print(f"  kernel   / read ceiling      {ratio('kernel', 'read'):.2f}")
    print(f"  torch.ao / read ceiling      {ratio('torch.ao', 'read'):.2f}")
    print(f"  1.5x torch.ao / read ceiling {1.5 * ratio('torch.ao', 'read'):.2f}  (> 1: out of reach)")


if __name__ == "__main__":
    main()
