"""CUDA benchmark cases for ``llmaccel.attention`` (Triton backend) against ``F.scaled_dot_product_attention``.

Registered into :mod:`llmaccel.bench.cases` only where ``torch.cuda.is_available()``;
the builders take any device, so the CPU test suite runs them at tiny shapes
under ``TRITON_INTERPRET=1`` (tests/test_gpu_bench_cases.py).

Peer: ``F.scaled_dot_product_attention`` on the same bf16 tensors; PyTorch
picks its own backend (flash / cuDNN / memory-efficient), as for any user.

* ``prefill-BxHxLxD[-causal]``: self-attention over L >= 2048 tokens, 2 input
  sets rotating.  GOP/s counts the two matmuls, 4*B*H*L*L*D (2 ops per
  multiply-add), halved when causal; softmax work is not counted.  Goal of
  the issue: speedup >= 0.9 (within 10 % of SDPA).
* ``decode-gqa-lk8192``: one query token, 32 query heads over 8 KV heads
  (GQA 4:1), D = 128, Lk = 8192.  One call is one layer; calls rotate through
  8 layers' caches (8 x 32 MiB of bf16 K/V = 256 MiB, beyond L2).  GB/s counts
  the K and V bytes of one layer, 2*Hkv*Lk*D*2; GOP/s 4*Hq*Lk*D.  Goal:
  speedup > 1.

Correctness is checked on every input set before timing against a float64
reference computed from the same bf16 inputs (softmax(q k^T / sqrt(D)) v,
chunked over heads).  FlashAttention's rule: llmaccel's max error must not
exceed twice SDPA's max error plus 2^-8 of the largest output value (half a
bf16 ulp at the top of the output's range); SDPA itself must be within 2^-5
of the output scale (a sanity check of inputs and reference).  Inputs are
N(0, 1), never zero.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
import torch.nn.functional as F

from .case import Bench, Case, Work, seeded_generator

__all__ = ["PEER", "reference_attention", "attention_check", "attention_prefill", "attention_decode", "cuda_cases"]

PEER = "F.scaled_dot_product_attention"
PEER_DESCRIPTION = ("torch.nn.functional.scaled_dot_product_attention on the same bf16 CUDA tensors; PyTorch picks "
                    "its backend (flash / cuDNN / memory-efficient) itself")

FLOOR_FRAC = 2.0 ** -8      # error floor, relative to max |reference|
PEER_MAX_FRAC = 2.0 ** -5   # SDPA's own max error must stay below this fraction of max |reference|
REF_CHUNK_BYTES = 256 << 20  # float64 score block per step of the reference


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, is_causal: bool) -> torch.Tensor:
    """softmax(q k^T / sqrt(D)) v in float64 (GQA: query head h reads kv head h // (Hq // Hkv)); fp32 result.

    Causal is top-left aligned (SDPA's ``is_causal``).  Chunked over query heads so that
    one float64 score block stays within REF_CHUNK_BYTES.
    """
    B, Hq, Lq, D = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    group = Hq // Hkv
    scale = 1.0 / math.sqrt(D)
    out = torch.empty((B, Hq, Lq, v.shape[3]), dtype=torch.float32, device=q.device)
    heads_per_step = max(1, min(Hq, REF_CHUNK_BYTES // max(1, Lq * Lk * 8)))
    allowed = None
    if is_causal:
        allowed = torch.arange(Lk, device=q.device)[None, :] <= torch.arange(Lq, device=q.device)[:, None]
    for b in range(B):
        for h0 in range(0, Hq, heads_per_step):
            h1 = min(Hq, h0 + heads_per_step)
            kv = torch.arange(h0, h1, device=q.device) // group
            s = torch.matmul(q[b, h0:h1].double(), k[b, kv].double().transpose(-1, -2)) * scale
            if allowed is not None:
                s.masked_fill_(~allowed, -math.inf)
            out[b, h0:h1] = torch.matmul(torch.softmax(s, dim=-1), v[b, kv].double()).to(torch.float32)
            del s
    return out


def attention_check(o: Any, p: Any, ref: torch.Tensor) -> Optional[str]:
    """None when ours (``o``) is as close to ``ref`` as FlashAttention's rule asks, relative to SDPA (``p``)."""
    from .cases_int8_linear_cuda import pair_problem  # here: either module may be imported first

    problem = pair_problem(o, p, ref, "SDPA")
    if problem:
        return problem
    scale = float(ref.abs().max())
    err_o = float((o.float() - ref).abs().max())
    err_p = float((p.float() - ref).abs().max())
    if not err_p <= PEER_MAX_FRAC * scale:
        return (f"SDPA itself is off by {err_p:.4g} (max |ref| {scale:.4g}, > 2^-5 of it): "
                "inputs or reference broken?")
    bound = 2 * err_p + FLOOR_FRAC * scale
    if not err_o <= bound:
        where = torch.nan_to_num((o.float() - ref).abs(), nan=math.inf).flatten().argmax()
        idx = tuple(int(i) for i in torch.unravel_index(where, o.shape))
        return (f"max |llmaccel - reference| = {err_o:.4g} > 2 x SDPA's ({err_p:.4g}) + 2^-8 x max |ref| "
                f"({scale:.4g}); worst at {idx}")
    return None


def _finish(ours, peer, args, refs, last, work, n_sets) -> Bench:
    def check(o: Any, p: Any) -> Optional[str]:
        return attention_check(o, p, refs[last[0]])

    from .cases_int8_linear_cuda import require_triton  # here: either module may be imported first

    require_triton("attention", args(0))
    bench = Bench(ours, peer, work, args, n_sets)
    bench.check = check
    return bench


def _rotating_calls(attention, sets: list, *, causal: bool, gqa: bool):
    """``(ours, peer, args, last)`` over input sets used in turn: call i runs set ``i % len(sets)`` through
    llmaccel (``last[0]`` records which, for the result check) or SDPA; ``args(i)`` is the op's
    positional arguments for that set (q, k, v, mask, dropout, causal, scale, gqa, bottom-right)."""
    sdpa = F.scaled_dot_product_attention
    last = [0]

    def ours(i: int):
        last[0] = i % len(sets)
        q, k, v = sets[last[0]]
        return attention(q, k, v, is_causal=causal, enable_gqa=gqa)

    def peer(i: int):
        q, k, v = sets[i % len(sets)]
        return sdpa(q, k, v, is_causal=causal, enable_gqa=gqa)

    def args(i: int):
        q, k, v = sets[i % len(sets)]
        return q, k, v, None, 0.0, causal, None, gqa, False

    return ours, peer, args, last


def attention_prefill(B: int, H: int, L: int, D: int, causal: bool, *, n_sets: int = 2,
                      dtype: torch.dtype = torch.bfloat16, seed: int = 30):
    """Builder: self-attention ``[B, H, L, D]`` (``is_causal=causal``), ``n_sets`` input sets rotating."""

    def build(case: Case, device: torch.device) -> Bench:
        import llmaccel

        g = seeded_generator(device, seed)
        sets = [tuple(torch.randn((B, H, L, D), generator=g, device=device).to(dtype) for _ in range(3))
                for _ in range(n_sets)]
        refs = [reference_attention(q, k, v, causal) for q, k, v in sets]
        ours, peer, args, last = _rotating_calls(llmaccel.attention, sets, causal=causal, gqa=False)
        work = Work(ops=4.0 * B * H * L * L * D * (0.5 if causal else 1.0), ops_unit="GFLOP/s")
        return _finish(ours, peer, args, refs, last, work, n_sets)

    return build


def attention_decode(n_layers: int, Hq: int, Hkv: int, Lk: int, D: int, *, B: int = 1,
                     dtype: torch.dtype = torch.bfloat16, seed: int = 31):
    """Builder: one query token against a layer's KV cache (GQA), one layer per call, ``n_layers`` rotating."""

    def build(case: Case, device: torch.device) -> Bench:
        import llmaccel

        g = seeded_generator(device, seed)
        layers = [tuple(torch.randn(shape, generator=g, device=device).to(dtype)
                        for shape in ((B, Hq, 1, D), (B, Hkv, Lk, D), (B, Hkv, Lk, D)))
                  for _ in range(n_layers)]
        refs = [reference_attention(q, k, v, False) for q, k, v in layers]
        ours, peer, args, last = _rotating_calls(llmaccel.attention, layers, causal=False, gqa=True)
        esize = torch.empty((), dtype=dtype).element_size()
        work = Work(ops=4.0 * B * Hq * Lk * D, bytes=2.0 * B * Hkv * Lk * D * esize, bytes_what="K/V cache",
                    ops_unit="GFLOP/s")
        return _finish(ours, peer, args, refs, last, work, n_layers)

    return build


# --------------------------------------------------------------------------
# The cases
# --------------------------------------------------------------------------

_PREFILL = [(1, 32, 2048, 128, True), (1, 32, 2048, 128, False), (1, 16, 4096, 64, True)]
_DECODE = dict(n_layers=8, Hq=32, Hkv=8, Lk=8192, D=128)


def cuda_cases() -> list[Case]:
    """The CUDA cases (listed in ``CASES`` below only where a GPU exists)."""
    out = []
    for B, H, L, D, causal in _PREFILL:
        out.append(Case(
            op="attention", name=f"prefill-{B}x{H}x{L}x{D}{'-causal' if causal else ''}",
            shape=f"B={B} H={H} L={L} D={D} causal={causal} bf16", device="cuda", peer=PEER,
            peer_description=PEER_DESCRIPTION,
            description=("bf16 prompt attention (2 input sets rotate); GOP/s = 4*B*H*L^2*D"
                         + (" / 2 (causal)" if causal else "") + "; issue goal: speedup >= 0.9"),
            build=attention_prefill(B, H, L, D, causal)))
    d = _DECODE
    kv_mib = 2 * d["Hkv"] * d["Lk"] * d["D"] * 2 >> 20
    out.append(Case(
        op="attention", name=f"decode-gqa-lk{d['Lk']}",
        shape=f"Hq={d['Hq']} Hkv={d['Hkv']} Lq=1 Lk={d['Lk']} D={d['D']} bf16 x{d['n_layers']} layers",
        device="cuda", peer=PEER, peer_description=PEER_DESCRIPTION + " (enable_gqa=True)",
        description=(f"one bf16 token against a layer's KV cache, GQA {d['Hq'] // d['Hkv']}:1; one call = one "
                     f"layer, {d['n_layers']} layers rotating ({d['n_layers']} x {kv_mib} MiB of K/V, beyond L2); "
                     "GB/s = K+V bytes of one layer; issue goal: speedup > 1"),
        build=attention_decode(**d)))
    return out


CASES: list[Case] = cuda_cases() if torch.cuda.is_available() else []  # collected by the registry (cases.py)
