"""CPU benchmark cases for ``llmaccel.attention`` (``CASES``, registered by :mod:`llmaccel.bench.cases`).

Peer: ``torch.nn.functional.scaled_dot_product_attention`` on the same fp32
CPU tensors (PyTorch's CPU flash kernel), what a user calls instead.  Both
sides run through their public Python entry points.

* prefill: the four (B, H, L, D, causal) shapes of the issue; GOP/s counts
  4 * B * H * Lq * Lk * D multiply-adds x2 (halved when causal).
* decode: one query token, 32 query heads over 8 KV heads, D = 128, Lk =
  4096, through 8 layers' caches rotated (8 x 32 MB of K/V, beyond L3);
  GB/s is K/V bytes streamed.
* fwd+bwd: forward and backward of (1, 8, 512, 64) causal.

Outputs are checked against SDPA before timing (max abs difference within
1e-4 of the output scale; gradients for fwd+bwd).

These are the CPU cases; the CUDA ones (Triton backend, bf16, against SDPA)
live in :mod:`llmaccel.bench.cases_attention_cuda`.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F

from .case import Bench, Case, Work, seeded_generator

CASES: list[Case] = []  # collected by the registry (cases.py)

PEER = "F.scaled_dot_product_attention"
PEER_DESCRIPTION = "torch.nn.functional.scaled_dot_product_attention on fp32 CPU tensors (PyTorch's CPU flash kernel)"


def _close(o: Any, p: Any) -> Optional[str]:
    outs = o if isinstance(o, tuple) else (o,)
    peers = p if isinstance(p, tuple) else (p,)
    for a, b in zip(outs, peers):
        err = (a - b).abs().max().item()
        if err > 1e-4 * max(1.0, b.abs().max().item()):
            return f"max |llmaccel - SDPA| = {err:.3g}"
    return None


def _prefill(B: int, H: int, L: int, D: int, causal: bool):
    def build(case: Case, device: torch.device) -> Bench:
        import llmaccel

        g = seeded_generator(device, 2)
        sets = [tuple(torch.randn((B, H, L, D), generator=g) for _ in range(3)) for _ in range(2)]

        def ours(i: int):
            q, k, v = sets[i % 2]
            return llmaccel.attention(q, k, v, is_causal=causal)

        def peer(i: int):
            q, k, v = sets[i % 2]
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

        def args(i: int):
            q, k, v = sets[i % 2]
            return q, k, v, None, 0.0, causal, None, False, False

        flops = 4.0 * B * H * L * L * D * (0.5 if causal else 1.0)
        return Bench(ours, peer, Work(ops=flops, ops_unit="GFLOP/s"), args, 2)

    return build


def _decode(n_layers: int, Hq: int, Hkv: int, Lk: int, D: int):
    def build(case: Case, device: torch.device) -> Bench:
        import llmaccel

        g = seeded_generator(device, 3)
        caches = [(torch.randn((1, Hkv, Lk, D), generator=g), torch.randn((1, Hkv, Lk, D), generator=g))
                  for _ in range(n_layers)]
        q = torch.randn((1, Hq, 1, D), generator=g)

        def ours(i: int):
            k, v = caches[i % n_layers]
            return llmaccel.attention(q, k, v, enable_gqa=True)

        def peer(i: int):
            k, v = caches[i % n_layers]
            return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)

        def args(i: int):
            k, v = caches[i % n_layers]
            return q, k, v, None, 0.0, False, None, True, False

        return Bench(ours, peer, Work(ops=4.0 * Hq * Lk * D, bytes=2.0 * Hkv * Lk * D * 4, bytes_what="K/V",
                                          ops_unit="GFLOP/s"),
                     args, n_layers)

    return build


def _fwd_bwd(B: int, H: int, L: int, D: int, causal: bool):
    def build(case: Case, device: torch.device) -> Bench:
        import llmaccel

        g = seeded_generator(device, 4)
        q, k, v = (torch.randn((B, H, L, D), generator=g).requires_grad_() for _ in range(3))
        dout = torch.randn((B, H, L, D), generator=g)

        def run(fn):
            def call(i: int):
                q.grad = k.grad = v.grad = None
                fn(q, k, v, is_causal=causal).backward(dout)
                return q.grad.clone(), k.grad.clone(), v.grad.clone()

            return call

        def args(i: int):
            return q, k, v, None, 0.0, causal, None, False, False

        flops = 4.0 * B * H * L * L * D * (0.5 if causal else 1.0) * 3.5  # fwd + bwd (2.5x fwd)
        return Bench(run(llmaccel.attention), run(F.scaled_dot_product_attention),
                     Work(ops=flops, ops_unit="GFLOP/s"), args, 1)

    return build


def _case(name: str, shape: str, build, description: str) -> Case:
    return Case(op="attention", name=name, shape=shape, device="cpu", peer=PEER, peer_description=PEER_DESCRIPTION,
                description=description, build=build, check=_close)


for _B, _H, _L, _D, _c in [(1, 16, 1024, 64, False), (1, 16, 1024, 64, True), (2, 32, 512, 128, True),
                           (1, 12, 384, 64, False)]:
    CASES.append(_case(f"prefill-{_B}x{_H}x{_L}x{_D}{'-causal' if _c else ''}",
                       f"B={_B} H={_H} L={_L} D={_D} causal={_c}", _prefill(_B, _H, _L, _D, _c),
                       "prompt attention, fp32"))
CASES.append(_case("decode-gqa", "Hq=32 Hkv=8 Lq=1 Lk=4096 D=128 x8 layers", _decode(8, 32, 8, 4096, 128),
                   "one token against 8 layers' KV caches (256 MB, beyond L3), GQA 4:1"))
CASES.append(_case("fwd+bwd-1x8x512x64-causal", "B=1 H=8 L=512 D=64 causal", _fwd_bwd(1, 8, 512, 64, True),
                   "training step of one attention layer: forward + backward"))
