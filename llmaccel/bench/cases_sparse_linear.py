"""CPU benchmark cases for ``llmaccel.sparse_linear`` (``CASES``, registered by :mod:`llmaccel.bench.cases`).

Like the int8_linear cases, the unit timed is a pass of the activations through chained 4096 x 4096 layers.
Ours: 2:4 fp32 weights in the N:M packed format (values + 2-bit indices: 0.53x the dense bytes).  Peer:
``torch.nn.functional.linear`` with the same pruned weights stored dense in fp32 (what a user has after
``torch.nn.utils.prune``).  Both compute the same math, so the check is fp32 rounding (relative error
<= 1e-4 of the output norm).

* ``decode``: M=1 through 8 layers (256 MB of packed fp32 values, 512 MB dense: far beyond the last-level
  cache, so every pass streams the weights from DRAM): GB/s of compressed weight.
* ``prefill``: M=512 through one layer, 2 weight sets rotating: GFLOP/s of the dense-equivalent work.
"""

from __future__ import annotations

import functools
from typing import Any, Optional

import torch

from .case import Bench, Case, Work, seeded_generator

CASES: list[Case] = []  # collected by the registry (cases.py)

K = N = 4096


@functools.lru_cache(maxsize=2)
def _stack(n_layers: int, seed: int):
    """(packed 2:4 NMPackedWeight, pruned dense fp32 weight, bias) per layer (cached, read-only)."""
    from ..sparsity import NMPackedWeight, prune

    g = seeded_generator(torch.device("cpu"), seed)
    bound = 1.0 / K ** 0.5
    layers = []
    for _ in range(n_layers):
        w = (torch.rand((N, K), generator=g) * 2 - 1) * bound
        b = (torch.rand((N,), generator=g) * 2 - 1) * bound
        packed = NMPackedWeight.from_dense(w, prune(w, "2:4"), "2:4")
        layers.append((packed, packed.to_dense(), b))
    return tuple(layers)


def _builder(M: int, n_layers: int, n_stacks: int):
    def build(case: Case, device: torch.device) -> Bench:
        import llmaccel

        if device.type != "cpu":
            raise RuntimeError("the sparse_linear CPU cases run on the CPU")
        g = seeded_generator(device, 1)
        stacks = [_stack(n_layers, seed=20 + s) for s in range(n_stacks)]
        fields = [[llmaccel.sparse_linear_fields(p) for p, _, _ in layers] for layers in stacks]
        xs = [torch.randn((M, K), generator=g) for _ in range(n_stacks)]

        def ours(i: int):
            j = i % n_stacks
            y = xs[j]
            for f, (_, _, b) in zip(fields[j], stacks[j]):
                y = llmaccel.sparse_linear(y, *f, b)
            return y

        def peer(i: int):
            j = i % n_stacks
            y = xs[j]
            for _, w, b in stacks[j]:
                y = torch.nn.functional.linear(y, w, b)
            return y

        def check(o: Any, p: Any) -> Optional[str]:
            rel = float((o.double() - p.double()).norm() / p.double().norm())
            return None if rel <= 1e-4 else f"relative error {rel:.3g} against the dense pruned stack (> 1e-4)"

        def args(i: int):
            j = i % n_stacks
            return (xs[j], *fields[j][0], stacks[j][0][2])

        packed_bytes = float(sum(p.nbytes() for p, _, _ in stacks[0]))
        work = Work(ops=2.0 * M * N * K * n_layers, bytes=packed_bytes if M <= 2 else None,
                    bytes_what="2:4 packed weight", ops_unit="GFLOP/s")
        bench = Bench(ours, peer, work, args, n_stacks)
        bench.check = check
        return bench

    return build


_PEER = ("F.linear fp32 (pruned, dense)", "torch.nn.functional.linear with the same 2:4-pruned weights stored dense "
                                          "in fp32 (MKL sgemv/sgemm)")

CASES.append(Case(op="sparse_linear", name="decode-2:4-vs-fp32", shape=f"M=1 K={K} N={N} x8 layers 2:4",
                  device="cpu", peer=_PEER[0], peer_description=_PEER[1],
                  description="one token through 8 chained 4096 x 4096 2:4 layers (256 MB packed, 512 MB dense "
                              "per pass, beyond L3)", build=_builder(1, 8, 1)))
CASES.append(Case(op="sparse_linear", name="prefill-2:4-vs-fp32", shape=f"M=512 K={K} N={N} 2:4",
                  device="cpu", peer=_PEER[0], peer_description=_PEER[1],
                  description="512 tokens through one 4096 x 4096 2:4 layer (2 weight sets rotate)",
                  build=_builder(512, 1, 2)))
