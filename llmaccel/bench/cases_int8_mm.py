"""Benchmark cases of ``llmaccel.int8_mm`` against ``torch._int_mm`` (CPU always, CUDA when a GPU exists)."""

from __future__ import annotations

import torch

from .case import Bench, Case, Work, random_int8_nonzero, seeded_generator

CASES: list[Case] = []  # collected by the registry (cases.py)


# --------------------------------------------------------------------------
# int8_mm
# --------------------------------------------------------------------------

_INT8_MM_PEER = {
    "cpu": ("torch._int_mm on CPU tensors: PyTorch's int8 x int8 -> int32 GEMM, same contract as "
            "llmaccel.int8_mm (torch 2.13 CPU builds run oneDNN's s8s8s32 gemm, per ONEDNN_VERBOSE=1)"),
    "cuda": ("torch._int_mm on CUDA tensors: PyTorch's int8 x int8 -> int32 GEMM (cuBLASLt); "
             "needs M > 16 and K, N multiples of 8"),
}


def _int8_mm_builder(M: int, K: int, N: int, n_sets: int, stream_bytes: bool, seed: int = 0):
    def build(case: Case, device: torch.device) -> Bench:
        import llmaccel

        g = seeded_generator(device, seed)
        acts = [random_int8_nonzero((M, K), g, device) for _ in range(n_sets)]
        # nn.Linear layout: a row-major [N, K] weight, used as b = w.t() ([K, N], column-major).
        weights = [random_int8_nonzero((N, K), g, device).t() for _ in range(n_sets)]
        n = n_sets
        int8_mm = llmaccel.int8_mm
        int_mm = torch._int_mm

        def ours(i: int):
            j = i % n
            return int8_mm(acts[j], weights[j])

        def peer(i: int):
            j = i % n
            return int_mm(acts[j], weights[j])

        def args(i: int):
            j = i % n
            return acts[j], weights[j]

        work = Work(ops=2.0 * M * N * K, bytes=float(K * N) if stream_bytes else None, bytes_what="weight")
        return Bench(ours, peer, work, args, n_sets)

    return build


def _int8_mm_case(name: str, M: int, K: int, N: int, device: str, n_sets: int, description: str,
                  stream_bytes: bool = False) -> Case:
    return Case(op="int8_mm", name=name, shape=f"M={M} K={K} N={N}", device=device, peer="torch._int_mm",
                peer_description=_INT8_MM_PEER[device], description=description,
                build=_int8_mm_builder(M, K, N, n_sets, stream_bytes))


# CPU.  Two input sets even for compute-bound shapes, so consecutive calls never share a weight.
CASES.append(_int8_mm_case(
        "prefill", 512, 4096, 4096, "cpu", 2,
        "prompt processing: 512 tokens through a 4096 x 4096 projection (compute-bound)"))
CASES.append(_int8_mm_case(
        "mlp-up", 64, 4096, 11008, "cpu", 2,
        "a 64-token batch through a LLaMA-7B MLP up-projection (45 MB weight)"))
CASES.append(_int8_mm_case(
        "decode", 1, 4096, 4096, "cpu", 8,
        "one token through 8 rotating 16 MB weights (128 MB, beyond the 32-36 MB L3), like a model's layers: "
        "memory-bound, GB/s of weight streamed is the figure of merit", stream_bytes=True))

# CUDA: only where a GPU exists.  torch._int_mm on CUDA needs M > 16, hence M=32 for decode-like work.
if torch.cuda.is_available():
    CASES.append(_int8_mm_case(
            "decode-m32", 32, 4096, 4096, "cuda", 8,
            "32 tokens (torch._int_mm's CUDA minimum is M=17) through 8 rotating 16 MB weights: memory-bound",
            stream_bytes=True))
    CASES.append(_int8_mm_case(
            "prefill", 512, 4096, 4096, "cuda", 2, "prompt processing: 512 tokens through a 4096 x 4096 projection"))
    CASES.append(_int8_mm_case(
            "mlp-up", 64, 4096, 11008, "cuda", 2, "a 64-token batch through a LLaMA-7B MLP up-projection"))
    CASES.append(_int8_mm_case("square-4096", 4096, 4096, 4096, "cuda", 2, "large square GEMM (compute-bound)"))
    CASES.append(_int8_mm_case("square-8192", 8192, 8192, 8192, "cuda", 1, "very large square GEMM (compute-bound)"))
